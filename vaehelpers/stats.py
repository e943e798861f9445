"""The statistics of the report's comparisons: means and spreads over seeds, and Welch's t-test.

A setting trained with several seeds is a small sample of what training it gives; two settings differ
*at 95 %* where Welch's t-test (unequal variances, Welch–Satterthwaite degrees of freedom; SciPy's
``ttest_ind(equal_var=False)``) rejects equal means at that level, that is where the confidence interval of
the difference of the means excludes 0. Two measurements of the same runs (the last epoch against the first,
the IWAE bound against the ELBO) are compared seed by seed instead: the paired t-test (``ttest_rel``) of their
differences. With one seed on either side there is no spread to test against ("not tested"): no variance is
lent from one setting to another. Where every seed of both settings gave the same value (a count such as the
active dimensions can), the test is undefined, and said so.

Each test is at 95 % on its own, with no correction for the number of tests a report makes: of twenty
differences that are not there, about one reads "real" by chance.

The words for these results are :mod:`vaehelpers.discussion`'s.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Literal

LEVEL = 0.95
"""The confidence level of every test in the report."""

Verdict = Literal["real", "not shown", "one seed", "no spread"]
"""What a test says of a difference: "real" at :data:`LEVEL`; "not shown" by the seeds at hand; not tested
because one side has one seed ("one seed") or neither side varies over its seeds ("no spread")."""


def mean_sd(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n − 1; 0 for one value) of a measurement over seeds."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class Comparison:
    """Welch's t-test of mean(a) − mean(b): the values of one measurement over the seeds of two settings; or,
    ``paired``, the paired t-test of two measurements of the same runs (a[i] and b[i] from seed i)."""

    a: tuple[float, ...]
    b: tuple[float, ...]
    level: float = LEVEL
    paired: bool = False

    @property
    def mean_a(self) -> float:
        return mean(list(self.a))

    @property
    def mean_b(self) -> float:
        return mean(list(self.b))

    @property
    def difference(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def verdict(self) -> Verdict:
        untested = self._untested()
        if untested:
            return untested
        return "real" if self.p_value < 1 - self.level else "not shown"

    def _untested(self) -> Verdict | None:
        if min(len(self.a), len(self.b)) < 2:
            return "one seed"
        if self.paired and len({x - y for x, y in zip(self.a, self.b)}) == 1:
            return "no spread"
        if not self.paired and len(set(self.a)) == 1 and len(set(self.b)) == 1:  # identical values, not a float's sd
            return "no spread"
        return None

    @property
    def tested(self) -> bool:
        return self._untested() is None

    @property
    def real(self) -> bool:
        """Whether the difference is shown at the test's level (False where it was not tested)."""
        return self.verdict == "real"

    @functools.cached_property
    def _result(self):
        from scipy import stats

        if not self.tested:
            raise ValueError(f"no test: {self.verdict}")
        with warnings.catch_warnings():  # SciPy's warning of nearly equal values: the test is still defined
            warnings.simplefilter("ignore", RuntimeWarning)
            if self.paired:
                return stats.ttest_rel(list(self.a), list(self.b))
            return stats.ttest_ind(list(self.a), list(self.b), equal_var=False)

    @property
    def p_value(self) -> float:
        return float(self._result.pvalue)

    @property
    def dof(self) -> float:
        """The Welch–Satterthwaite degrees of freedom (paired: n − 1)."""
        return float(self._result.df)

    @property
    def interval(self) -> tuple[float, float]:
        """The confidence interval of mean(a) − mean(b) at the test's level."""
        ci = self._result.confidence_interval(confidence_level=self.level)
        return float(ci.low), float(ci.high)

    def beyond(self, threshold: float) -> bool:
        """Whether the test shows mean(a) − mean(b) beyond ``threshold`` (above a positive one, below a negative
        one): the whole confidence interval past it. What an interpretation needs, where a difference merely
        shown could be small."""
        if not self.tested:
            return False
        low, high = self.interval
        return low > threshold if threshold >= 0 else high < threshold


def welch(a: list[float], b: list[float], level: float = LEVEL) -> Comparison:
    return Comparison(tuple(float(v) for v in a), tuple(float(v) for v in b), level)


def paired(a: list[float], b: list[float], level: float = LEVEL) -> Comparison:
    """Two measurements of the same runs, seed by seed."""
    if len(a) != len(b):
        raise ValueError(f"A paired test needs one pair per seed; got {len(a)} and {len(b)} values.")
    return Comparison(tuple(float(v) for v in a), tuple(float(v) for v in b), level, paired=True)
