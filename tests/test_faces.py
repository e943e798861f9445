
import numpy as np

from vaehelpers.faces import CATEGORICAL, FACTOR_RANGES, _draw_face, make_faces, sample_factors


def test_deterministic_for_a_seed():
    a, fa = make_faces(20, seed=5)
    b, fb = make_faces(20, seed=5)
    c, _ = make_faces(20, seed=6)
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not np.array_equal(a, c)


def test_at_least_six_independent_factors_each_change_the_face():
    factors = sample_factors(4000, seed=0)
    assert len(factors) >= 6
    names = list(factors)
    corr = np.corrcoef(np.stack([factors[k] for k in names]))
    off_diagonal = corr[~np.eye(len(names), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.1  # drawn independently
    base = {k: (lo + hi) / 2 for k, (lo, hi) in FACTOR_RANGES.items()}
    base.update({k: 0.0 for k in CATEGORICAL})
    reference = np.asarray(_draw_face(base, 64)).astype(int)
    for name, (_, hi) in FACTOR_RANGES.items():
        changed = dict(base, **{name: float(int(hi) - 1) if name in CATEGORICAL else hi})  # the other end
        diff = np.abs(np.asarray(_draw_face(changed, 64)).astype(int) - reference).sum()
        assert diff > 0, f"factor {name} does not change the image"


def test_ten_thousand_faces_with_their_factors():  # how fast: python -m vaehelpers bench
    images, factors = make_faces(10_000, seed=0)
    assert images.shape[0] == 10_000 and all(len(v) == 10_000 for v in factors.values())


def test_faces_are_not_blank_and_vary():
    images, _ = make_faces(50, seed=1)
    assert images.std(axis=(1, 2, 3)).min() > 20  # every image has structure
    assert images.astype(float).std(axis=0).mean() > 20  # and they differ from each other
