"""The report's discussion (Q8) and the tested comparisons behind every text: sentences from the measurements.

Every number in these sentences is read from the measurements; they quote the mean over each setting's seeds,
as Q8's table does (:mod:`vaehelpers.tables`). Every comparison a sentence states carries the verdict of its test
(:mod:`vaehelpers.stats`), and a sentence that interprets a difference is only written where the test shows it.
This module keeps the words; the statistics are :mod:`vaehelpers.stats`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .params import ASSIGNMENT_WEIGHTS
from .stats import LEVEL, Comparison, mean, paired, welch
from .store import Setting

FIXED_1 = Setting("fixed", 1.0)
SIGMA_1 = Setting("sigma-vae", 1.0)


def joined(items: list[str]) -> str:
    """Items in words: 'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _num(x: float, sign: str = "") -> str:
    """Three significant digits, whole numbers from 1,000 up, and a minus sign (U+2212) that LaTeX keeps with
    its number."""
    text = f"{x:{sign},.0f}" if abs(x) >= 1000 else f"{x:{sign}.3g}"
    return text.replace("-", "−")


VERDICT = re.compile(r"a real difference at \d+ %|not shown by \d+ (?:and \d+ )?seeds|one seed: not tested|"
                     r"no spread over the seeds: not tested")
"""How every tested comparison's verdict reads (:func:`verdict`)."""


def verdict(c: Comparison) -> str:
    """The words of a test's verdict: 'a real difference at 95 %', 'not shown by 2 seeds each', ..."""
    n_a, n_b = len(c.a), len(c.b)
    return {"real": f"a real difference at {c.level:.0%}".replace("%", " %"),
            "not shown": f"not shown by {n_a} seeds each" if n_a == n_b else f"not shown by {n_a} and {n_b} seeds",
            "one seed": "one seed: not tested",
            "no spread": "no spread over the seeds: not tested"}[c.verdict]


@dataclass
class Claims:
    """The comparisons a text states, in order, each with its test (:mod:`vaehelpers.stats`)."""

    made: list[tuple[str, Comparison]] = field(default_factory=list)

    def said(self, what: str, a: list[float], b: list[float], same_runs: bool = False) -> Comparison:
        """Test mean(a) against mean(b) and keep it under ``what`` ('rate, weight 100 against weight 1');
        ``same_runs``: two measurements of the same runs, a[i] and b[i] from seed i (the paired test). A text may
        state one comparison twice, either way round: it is kept, listed and counted once."""
        c = paired(a, b) if same_runs else welch(a, b)
        if not any(_same_comparison(what, c, known_what, known) for known_what, known in self.made):
            self.made.append((what, c))
        return c

    def tag(self, what: str, a: list[float], b: list[float], same_runs: bool = False) -> str:
        """The verdict in brackets, for the sentence that states the comparison."""
        return f" ({verdict(self.said(what, a, b, same_runs))})"


def _same_comparison(what: str, c: Comparison, known_what: str, known: Comparison) -> bool:
    """Whether two stated comparisons are one: the same words and values, or the same two sets of values named the
    other way round ('rate, weight 1 against weight 0' and 'rate, weight 0 against weight 1')."""
    if known.paired != c.paired:
        return False
    if known_what == what and (known.a, known.b) == (c.a, c.b):
        return True
    turned = re.fullmatch(r"(.+), (.+) against (.+)", what)
    return bool(turned) and known_what == f"{turned[1]}, {turned[3]} against {turned[2]}" and (known.a, known.b) == (c.b, c.a)


def claims_markdown(claims: Claims, source: str = "the discussion above") -> str:
    """Every comparison ``source`` states: the two means, the difference, its confidence interval and the
    verdict of Welch's t-test; first a line that counts them."""
    if not claims.made:
        return f"*{source[0].upper() + source[1:]} states no comparison.*"
    lines, counts = [], {"real": 0, "not shown": 0, "one seed": 0, "no spread": 0}
    for what, c in claims.made:
        counts[c.verdict] += 1
        line = (f"- {what[0].upper() + what[1:]}: {_num(c.mean_a)} (n = {len(c.a)}) against {_num(c.mean_b)} "
                f"(n = {len(c.b)}), a difference of {_num(c.difference, '+')}")
        if c.tested:
            low, high = c.interval
            test = "paired t-test of the same runs" if c.paired else "Welch's t-test"
            line += (f", {c.level:.0%} interval {_num(low, '+')} to {_num(high, '+')} ({test}, "
                     f"{c.dof:.1f} degrees of freedom, p = {c.p_value:.2g})").replace("%", " %")
        lines.append(f"{line}: **{verdict(c)}**.")
    untested = counts["one seed"] + counts["no spread"]
    head = (f"{source[0].upper() + source[1:]} states {len(claims.made)} distinct comparison"
            f"{'s' if len(claims.made) != 1 else ''} (one stated twice is tested and counted once). "
            f"Welch's t-test at {LEVEL:.0%}: {counts['real']} real difference{'s' if counts['real'] != 1 else ''}, "
            f"{counts['not shown']} not shown by the seeds at hand, {untested} not tested"
            + (f" ({counts['one seed']} with one seed of a setting, {counts['no spread']} with no spread over the "
               "seeds)" if untested else "") + ". Each test is at 95 % on its own, with no correction for their "
            "number: of twenty differences that are not there, about one would read as real by chance.").replace("%", " %")
    return head + "\n\n" + "\n".join(lines)


COMPARES = re.compile(r"\bagainst\b|\bthan\b|\blowest\b|\bhighest\b|\blower\b|\bhigher\b|\blarger\b|\bsmaller\b|"
                      r"\btighter\b|\bbetter\b|\bworse\b|\bbelow\b|\babove\b|\bas much as\b|\bmore\b|\bless\b|"
                      r"\bfrom\b[^.;]*\bto\b")
"""The words by which a sentence compares two numbers (:func:`comparison_coverage`)."""


def comparison_coverage(markdown: str) -> tuple[int, int]:
    """(sentences of ``markdown`` that state a comparison, those of them that carry a test's verdict for each):
    a sentence compares where it uses a word of :data:`COMPARES`; it is covered where it carries a verdict
    (:data:`VERDICT`) for each of its 'against's, and at least one."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+(?=[*A-Z(])", markdown) if COMPARES.search(s)]
    covered = [s for s in sentences if len(VERDICT.findall(s)) >= max(1, len(re.findall(r"\bagainst\b", s)))]
    return len(sentences), len(covered)


@dataclass
class Discussion:
    """Q8's discussion: its Markdown and the comparisons it states, each tested (:func:`claims_markdown`)."""

    markdown: str
    claims: Claims


def discussion(by_seed: dict[Setting, list[dict]], curves: dict[Setting, list[list[float]]], latent_dim: int) -> Discussion:
    """Q8: sentences built from the measurements of every seed of each setting, so none can contradict the table.

    Every figure quoted is the mean over the setting's seeds (Q8's table); every comparison or ordering a
    sentence states is tested with Welch's t-test (:mod:`vaehelpers.stats`) and carries its verdict, and an
    interpretation is written only where its comparison is shown at 95 %. ``curves``: each seed's validation
    −ELBO per epoch.
    """
    weights = {s.kl_weight: ms for s, ms in by_seed.items() if s.likelihood == "fixed"}
    for w in ASSIGNMENT_WEIGHTS:
        if w not in weights:
            raise ValueError(f"The discussion needs runs with KL weights 1, 100 and 0; weight {w:g} is missing.")
    claims = Claims()
    tag = claims.tag

    def v(w: float, key: str) -> list[float]:
        return [m[key] for m in weights[w]]

    def avg(w: float, key: str) -> float:
        return mean(v(w, key))

    r, kl, nelbo = ({w: avg(w, k) for w in weights} for k in ("distortion", "rate", "neg_elbo"))
    au = avg(1.0, "active_units")
    seeds = {w: len(ms) for w, ms in weights.items()}
    several = [w for w in sorted(weights) if seeds[w] > 1]
    lead = ("Every figure in this discussion is the mean over the seeds of its setting, as in Q8's table ("
            + ", ".join(f"weight {w:g}: {seeds[w]} seed{'s' if seeds[w] > 1 else ''}" for w in sorted(weights))
            + f"); each comparison carries the verdict of its test at {LEVEL:.0%} over those seeds (Welch's t-test "
            "between settings, the paired t-test between two measurements of the same runs), whose intervals are "
            "listed after the discussion.").replace("%", " %")

    curve = curves[FIXED_1]
    first, last = [c[0] for c in curve], [c[-1] for c in curve]
    fell = claims.said("validation −ELBO at weight 1, last epoch against first", last, first, same_runs=True)
    iwae = claims.said("IWAE bound against −ELBO at weight 1", v(1.0, "iwae_neg_log_px"), v(1.0, "neg_elbo"),
                       same_runs=True)
    gap = nelbo[1.0] - avg(1.0, "iwae_neg_log_px")
    text = [lead, f"**Weight 1 (the ELBO).** Over {len(curve[0])} epochs the validation −ELBO went from "
            f"{mean(first):,.1f} to {mean(last):,.1f} nats per image ({verdict(fell)}). At the end the reconstruction "
            f"term is {r[1.0]:.1f} and the KL {kl[1.0]:.1f} nats, spread over {_count(au)} active latent dimensions "
            f"of {latent_dim}. The importance-weighted bound ({avg(1.0, 'iwae_neg_log_px'):,.1f} nats) lies "
            + (f"{gap:.1f} nats below the ELBO" if gap > 0 else f"{-gap:.1f} nats above the ELBO")
            + f" ({verdict(iwae)})."]

    rate_100 = claims.said("rate, weight 100 against weight 1", v(100.0, "rate"), v(1.0, "rate"))
    blur = claims.said("distortion, weight 100 against weight 1", v(100.0, "distortion"), v(1.0, "distortion"))
    diversity = {w: avg(w, "sample_diversity") / avg(w, "data_diversity") for w in (1.0, 100.0)}
    samey = claims.said("diversity of prior samples, weight 100 against weight 1", v(100.0, "sample_diversity"),
                        v(1.0, "sample_diversity"))
    collapsed = rate_100.real and rate_100.difference < 0 and max(v(100.0, "rate")) < 1  # every seed under 1 nat
    text.append(
        f"**Weight 100.** With each nat of KL priced 100 times higher, the KL is {kl[100.0]:.2f} nats against "
        f"{kl[1.0]:.1f} at weight 1 ({verdict(rate_100)})"
        + (": q(z|x) is nearly the prior for every image — *posterior collapse* — so the code says almost nothing "
           "about the image. " if collapsed else ". ")
        + f"The reconstruction error is {r[100.0]:.1f} against {r[1.0]:.1f} at weight 1 ({r[100.0] / r[1.0]:.2f}×; "
        f"{verdict(blur)})" + (", which is the blur in the figures" if blur.beyond(0.1 * r[1.0]) else "")
        + f"; reconstructions keep {avg(100.0, 'sharpness_ratio'):.0%} of the real images' sharpness against "
        f"{avg(1.0, 'sharpness_ratio'):.0%} at weight 1"
        + tag("sharpness of reconstructions, weight 100 against weight 1", v(100.0, "sharpness_ratio"),
              v(1.0, "sharpness_ratio"))
        + f". Prior samples vary {diversity[100.0]:.0%} as much as real images do, against {diversity[1.0]:.0%} at "
        f"weight 1 ({verdict(samey)})"
        + (", so they are nearly one average face." if samey.beyond(-0.5 * avg(1.0, "sample_diversity")) else "."))

    recon_0 = claims.said("distortion, weight 0 against weight 1", v(0.0, "distortion"), v(1.0, "distortion"))
    spread_0 = claims.said("KL of the aggregate posterior, weight 0 against weight 1", v(0.0, "aggregate_kl"),
                           v(1.0, "aggregate_kl"))
    mmd_0 = claims.said("MMD² of prior samples, weight 0 against weight 1", v(0.0, "mmd"), v(1.0, "mmd"))
    holes = spread_0.beyond(avg(1.0, "aggregate_kl") + 1) and mmd_0.beyond(avg(1.0, "mmd"))  # both over twice
    text.append(
        f"**Weight 0 (a plain autoencoder).** Nothing ties q(z|x) to the prior: its KL, measured but not "
        f"trained, is {kl[0.0]:,.1f} nats; the codes of real images spread with a standard deviation of "
        f"{avg(0.0, 'code_std'):.2f} per dimension where the prior has 1, with posterior σ of "
        f"{avg(0.0, 'posterior_std'):.2f}. "
        + _sentence(recon_0, "Reconstructions are better than at weight 1", "Reconstructions are worse than at weight 1",
                    "Reconstructions are not shown to differ from those at weight 1" if recon_0.tested else
                    "Reconstruction error, set beside weight 1's")
        + f" ({r[0.0]:.1f} against {r[1.0]:.1f}; {verdict(recon_0)}). The Gaussian fitted to all the codes sits "
        f"{avg(0.0, 'aggregate_kl'):,.1f} nats from N(0, I), against {avg(1.0, 'aggregate_kl'):.1f} at weight 1 "
        f"({verdict(spread_0)}), and decoded prior samples are {avg(0.0, 'mmd'):.3f} (MMD²) from real images, "
        f"against {avg(1.0, 'mmd'):.3f} at weight 1 ({verdict(mmd_0)})"
        + (": most codes drawn from the prior fall where the decoder was never trained, which is why the prior "
           "samples are poor although the reconstructions are not." if holes else "."))

    if all(m["probe_r2_sampled"] for w in ASSIGNMENT_WEIGHTS for m in weights[w]):
        probe = {w: [m["probe_r2_sampled"] for m in weights[w]] for w in ASSIGNMENT_WEIGHTS}
        factors = list(probe[1.0][0])
        r2 = {w: {f: mean([p[f] for p in probe[w]]) for f in factors} for w in probe}
        overall = {w: [mean(list(p.values())) for p in probe[w]] for w in probe}
        top = max(factors, key=r2[1.0].get)
        text.append(
            f"**What the codes keep.** Read from a sampled z, as the decoder receives it, a linear probe recovers "
            f"the built-in factors with a mean R² of {_r2(mean(overall[1.0]))} at weight 1, against "
            f"{_r2(mean(overall[0.0]))} at weight 0" + tag("mean probe R², weight 0 against weight 1", overall[0.0], overall[1.0])
            + f" and {_r2(mean(overall[100.0]))} at weight 100" + tag("mean probe R², weight 100 against weight 1",
                                                                  overall[100.0], overall[1.0])
            + f". {top.replace('_', ' ').capitalize()}, the factor with the largest mean R² at weight 1, scores "
            f"{_r2(r2[1.0][top])} there against {_r2(r2[100.0][top])} at weight 100"
            + tag(f"probe R² of {top.replace('_', ' ')}, weight 100 against weight 1",
                  [p[top] for p in probe[100.0]], [p[top] for p in probe[1.0]]) + ".")

    text.append(_kl_effect(weights, nelbo, kl, r, several, claims))
    return Discussion("\n\n".join(text), claims)


def _count(x: float) -> str:
    """A count averaged over seeds: whole where it is."""
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def _sentence(c: Comparison, lower: str, higher: str, neither: str) -> str:
    """The words for a comparison of a against b: ``lower`` or ``higher`` only where the test shows it."""
    return (lower if c.difference < 0 else higher) if c.real else neither


def _r2(value: float) -> str:
    """An R² to two decimals, with no "-0.00" for a value that rounds to zero."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def _kl_effect(weights: dict[float, list[dict]], nelbo: dict[float, float], kl: dict[float, float],
               r: dict[float, float], several: list[float], claims: Claims) -> str:
    """The paragraph on the KL term: which weight has the lowest −ELBO, tested against each other weight, and the
    rate and distortion along the weights, tested between neighbouring weights that have several seeds."""
    order = sorted(weights)
    best = min(nelbo, key=nelbo.get)
    against = {w: claims.said(f"−ELBO, weight {best:g} against weight {w:g}", [m["neg_elbo"] for m in weights[best]],
                             [m["neg_elbo"] for m in weights[w]]) for w in order if w != best}
    shown = [w for w, c in against.items() if c.real]
    untested = [w for w, c in against.items() if not c.tested]
    text = (f"**The KL term's effect.** The −ELBO, an upper bound on −log p(x), has its lowest mean at weight "
            f"{best:g} ({nelbo[best]:,.1f} nats), against "
            + "; ".join(f"{nelbo[w]:,.1f} at weight {w:g} ({verdict(c)})" for w, c in against.items()) + ". ")
    if best == 1.0 and len(shown) == len(against):
        text += "That is expected: weight 1 is the only setting that optimises the bound itself. "
    elif best == 1.0:
        text += ("Weight 1 is the only setting that optimises the bound itself; "
                 + (f"its lowest mean is a real difference at {LEVEL:.0%} against weight{'s' if len(shown) > 1 else ''} "
                    f"{joined([f'{w:g}' for w in shown])} only. ".replace("%", " %") if shown else
                    "no comparison with it is tested (one seed). " if len(untested) == len(against) else
                    "these seeds show none of those differences. "))
    elif 1.0 in shown:
        text += "Weight 1 is the only setting that optimises the bound itself, so the run was likely too short. "
    elif 1.0 in untested:
        text += (f"Weight 1 is the only setting that optimises the bound itself; weight {best:g}'s mean is set beside "
                 "it untested (one seed). ")
    else:
        text += (f"Weight 1 is the only setting that optimises the bound itself, and the seeds at hand do not show "
                 f"weight {best:g}'s mean to differ from it. ")
    steps = list(zip(several, several[1:]))
    tested = "; ".join(
        f"{name} {a:g} → {b:g}"
        + claims.tag(f"{name}, weight {b:g} against weight {a:g}", [m[key] for m in weights[b]], [m[key] for m in weights[a]])
        for name, key in (("rate", "rate"), ("distortion", "distortion")) for a, b in steps)
    single = [f"{w:g}" for w in order if w not in several]
    return (text + "Raising the weight from " + " to ".join(f"{w:g}" for w in order) + " moved the mean rate (KL) "
            "from " + " to ".join(f"{kl[w]:,.1f}" for w in order) + " nats and the mean distortion from "
            + " to ".join(f"{r[w]:.1f}" for w in order) + " (the rate–distortion curve above); between neighbouring "
            "weights with several seeds: " + (tested or "none (one seed: not tested)") + "."
            + (f" Weight{'s' if len(single) > 1 else ''} {joined(single)} {'have' if len(single) > 1 else 'has'} one "
               "seed: not tested." if single else "")
            + " In theory the KL weight sets how many nats the encoder may spend describing each image, trading "
            "codes that match the prior, so that prior samples decode to images like the training set, for detail; "
            "the verdicts say which of its steps these runs show.")


def sigma_vae_markdown(by_seed: dict[Setting, list[dict]]) -> str:
    """How the calibrated decoder compares with the fixed σ² = 1/2 (both trained with KL weight 1): means over
    each one's seeds, every comparison with its test's verdict."""
    fixed, sigma = by_seed.get(FIXED_1), by_seed.get(SIGMA_1)
    if not fixed or not sigma:
        return "*No σ-VAE run in this report (parameter sigma_vae = False).*"
    claims = Claims()

    def avg(ms: list[dict], key: str) -> float:
        return mean([m[key] for m in ms])

    def tag(what: str, key: str) -> str:
        return claims.tag(f"{what}, σ-VAE against the fixed decoder", [m[key] for m in sigma], [m[key] for m in fixed])

    calibrated = avg(sigma, "calibrated_sigma")
    n = len(sigma)
    return (
        f"The fixed decoder variance σ² = 1/2 is a choice, and it acts as a KL weight: the loss "
        f"$\\sum (x - \\hat{{x}})^2 / (2\\sigma^2) + \\mathrm{{KL}}$ is proportional to "
        f"$\\sum (x - \\hat{{x}})^2 + 2\\sigma^2 \\, \\mathrm{{KL}}$, so KL weight β with σ² = 1/2 is the same as "
        f"weight 1 with σ² = β/2. The σ-VAE (Rybkin et al. 2021) sets σ² to its optimum, the mean squared "
        f"error, which here settled at σ = {calibrated:.3f}" + (f" (mean of {n} seeds)" if n > 1 else "")
        + f": an effective KL weight of 2σ² = {2 * calibrated ** 2:.3f} in place of the assignment's 1. Its own "
        f"−ELBO, under the calibrated decoder, is {avg(sigma, 'neg_elbo'):,.1f} nats per image against "
        f"{avg(fixed, 'neg_elbo'):,.1f} for the fixed decoder" + tag("−ELBO", "neg_elbo")
        + f", or {avg(fixed, 'calibrated_neg_elbo'):,.1f} once the fixed model's σ is calibrated after training; "
        f"its rate is {avg(sigma, 'rate'):.1f} nats against {avg(fixed, 'rate'):.1f}" + tag("rate", "rate")
        + f", its reconstruction PSNR {avg(sigma, 'psnr_db'):.2f} dB against {avg(fixed, 'psnr_db'):.2f} dB"
        + tag("PSNR", "psnr_db") + f", and its reconstructions keep {avg(sigma, 'sharpness_ratio'):.0%} of the "
        f"real images' sharpness against {avg(fixed, 'sharpness_ratio'):.0%}"
        + tag("sharpness of reconstructions", "sharpness_ratio") + ". A −ELBO in nats per image can be negative: it "
        "is a density of continuous pixel values, above 1 where the decoder's σ is small.\n\n"
        + claims_markdown(claims, "this section"))
