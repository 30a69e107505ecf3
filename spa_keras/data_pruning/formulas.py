"""The sample-importance scores, as NumPy functions of what a :class:`~spa_keras.data_pruning.ScoreRecorder`
records at each of ``T`` recording points (epoch ends, by default) for ``n`` samples.

Every score is "higher = more important": ``select(..., strategy="top")`` keeps the highest.

>>> import numpy as np
>>> from spa_keras.data_pruning import formulas
>>> p = np.array([[0.1, 0.9], [0.5, 0.9], [0.9, 0.9]])      # p(y|x) at 3 epochs for 2 samples
>>> formulas.dynamic_uncertainty(p).round(3)                  # the second never changes: 0
array([0.4, 0. ])
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError

#: the window of Dynamic Uncertainty in He et al. (2023) and of TDDS in Zhang et al. (2024), in epochs
PAPER_WINDOW = 10
#: TDDS's exponential decay (Zhang et al., 2024)
PAPER_DECAY = 0.9
EPS = 1e-8


def _window(window, T, minimum, name):
    """The window length: the paper's, shrunk to the run's ``T`` recordings."""
    if T < minimum:
        raise InvalidArgumentError(f"{name} needs at least {minimum} recordings (epochs), got {T}: train for "
                                   f"{minimum} epochs or more")
    if window is None:
        return min(PAPER_WINDOW, T)
    if not isinstance(window, (int, np.integer)) or not minimum <= window <= T:
        raise InvalidArgumentError(f"{name}: window must be an integer in [{minimum}, {T}] (the number of "
                                   f"recordings), got {window!r}")
    return int(window)


def _sliding(a, window):
    """``(T - window + 1, window, n)`` views of the windows of ``a`` (``T, n``)."""
    return np.lib.stride_tricks.sliding_window_view(a, window, axis=0).transpose(0, 2, 1)


def dynamic_uncertainty(p_true, window: int | None = None) -> np.ndarray:
    """Dynamic Uncertainty (He et al., "Large-scale Dataset Pruning with Dynamic Uncertainty",
    arXiv 2306.05175): how much the predicted probability of the true label moves during training.

    With ``P_k(x) = p_k(y | x)`` at recording ``k = 0 … T-1`` and a window of ``J`` recordings::

        U_k(x) = sqrt( Σ_{j=0}^{J-1} (P_{k+j}(x) − P̄_k(x))² / (J − 1) ),  P̄_k = (1/J) Σ_j P_{k+j}(x)
        U(x)   = (1 / (T − J + 1)) Σ_{k=0}^{T−J} U_k(x)

    ``J`` is the paper's 10, or ``T`` for shorter runs (a run must record at least 2 points).

    Args:
        p_true: ``(T, n)`` array, ``p_k(y_i | x_i)``.
        window: ``J``; default ``min(10, T)``.

    Returns:
        ``(n,)`` float64 scores; a sample whose ``p(y|x)`` never changes scores 0.

    >>> dynamic_uncertainty(np.array([[0.2], [0.4], [0.6]]), window=2).round(4)
    array([0.1414])
    """
    p = np.asarray(p_true, dtype=np.float64)
    J = _window(window, len(p), 2, "dynamic_uncertainty")
    return _sliding(p, J).std(axis=1, ddof=1).mean(axis=0)


def kl_change(p_prev, p_next) -> np.ndarray:
    """TDDS's per-transition change of the prediction, a KL-like term (Zhang et al., Eq. 5)::

        d_t(x) = Σ_c | p_{t+1}(c|x) · (log p_{t+1}(c|x) − log p_t(c|x)) |

    >>> kl_change(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]))
    array([0.])
    """
    p_prev = np.asarray(p_prev, dtype=np.float64)
    p_next = np.asarray(p_next, dtype=np.float64)
    return np.abs(p_next * (np.log(p_next + EPS) - np.log(p_prev + EPS))).sum(axis=-1)


def tdds(kl, window: int | None = None, decay: float = PAPER_DECAY) -> np.ndarray:
    """Temporal Dual-Depth Scoring (Zhang et al., "Spanning Training Progress: Temporal Dual-Depth
    Scoring (TDDS) for Enhanced Dataset Pruning", CVPR 2024, arXiv 2311.13613).

    From the ``T − 1`` transitions ``d_t`` of :func:`kl_change` between consecutive recordings, the
    variability within each window of ``J`` recordings (``J − 1`` transitions), then an exponential
    moving average that weighs later windows more::

        R_k(x) = || (d_t(x) − d̄_k(x))_{t = k … k+J−2} ||_2,   d̄_k = mean of the window
        S(x)   = Σ_{k=0}^{T−J} β (1 − β)^{T−J−k} R_k(x)

    ``J`` is the paper's 10 (``min(10, T)`` for shorter runs, at least 3: two transitions), ``β``
    the paper's 0.9.

    Args:
        kl: ``(T - 1, n)`` array of ``d_t``.
        window: ``J`` in recordings; default ``min(10, T)``.
        decay: ``β`` in (0, 1].

    >>> tdds(np.array([[0.1, 0.0], [0.3, 0.0]])).round(4)     # T = 3: one window of 2 transitions
    array([0.1273, 0.    ])
    """
    d = np.asarray(kl, dtype=np.float64)
    T = len(d) + 1
    J = _window(window, T, 3, "tdds")
    if not 0 < decay <= 1:
        raise InvalidArgumentError(f"tdds: decay must be in (0, 1], got {decay!r}")
    win = _sliding(d, J - 1)  # (T - J + 1, J - 1, n)
    r = np.sqrt(((win - win.mean(axis=1, keepdims=True)) ** 2).sum(axis=1))
    k = np.arange(len(r))
    w = decay * (1 - decay) ** (T - J - k)
    return (w[:, None] * r).sum(axis=0)


def el2n(probs, y) -> np.ndarray:
    """EL2N (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021, arXiv 2107.07075): the L2
    norm of the error vector early in training, ``|| p(x) − onehot(y) ||_2``.

    Args:
        probs: ``(n, C)`` predicted probabilities (at one recording, or averaged over runs).
        y: ``(n,)`` integer labels.

    >>> el2n(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 0])).round(4)
    array([0.    , 0.7071])
    """
    probs = np.asarray(probs, dtype=np.float64)
    err = probs.copy()
    err[np.arange(len(err)), np.asarray(y)] -= 1.0
    return np.sqrt((err ** 2).sum(axis=1))


def forgetting_events(correct) -> np.ndarray:
    """Forgetting events (Toneva et al., "An Empirical Study of Example Forgetting during Deep
    Neural Network Learning", ICLR 2019, arXiv 1812.05159): how often a sample goes from correctly
    to wrongly classified between consecutive recordings::

        F(x) = Σ_t [acc_t(x) = 1 and acc_{t+1}(x) = 0]

    Samples never classified correctly count as forgotten ``T`` times, more than any learned sample can
    be (at most ``T // 2``), as in the paper (never-learned samples rank as the most forgettable).
    Recordings at epoch ends approximate the paper's per-presentation counts.

    Args:
        correct: ``(T, n)`` booleans, whether the prediction is the label at each recording.

    >>> forgetting_events(np.array([[1, 1, 0], [0, 1, 0], [1, 1, 0]], dtype=bool))
    array([1., 0., 3.])
    """
    c = np.asarray(correct, dtype=bool)
    events = (c[:-1] & ~c[1:]).sum(axis=0).astype(np.float64)
    events[~c.any(axis=0)] = len(c)
    return events


SCORES = ("dynamic_uncertainty", "tdds", "el2n", "forgetting")
