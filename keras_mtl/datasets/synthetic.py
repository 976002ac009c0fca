"""Built-in synthetic multi-task data: the MMoE generator and a funnel.

Two generators, both numpy only, vectorised and deterministic given `seed`:

- `synthetic_correlated`: the regression pair of Ma et al. (KDD 2018) whose
  task correlation is a knob, the classic benchmark for sharing structures.
- `synthetic_funnel`: impressions of a recommender with a click ->
  conversion funnel, position bias, sample-selection bias and labels that
  exist only after a click; the library's default demo data.
"""

import math

import numpy as np
import pandas as pd

from keras_mtl.task import Task

FUNNEL_LABELS = ["click", "conversion", "like", "watch_time"]
DEVICES = ("ios", "android", "web")

# Funnel constants (logit scale). Chosen so that, at the default sizes, CTR
# is about 9%, CVR given a click about 20%, CTR at position 1 about 2.7
# times CTR at position 10, and the mean conversion propensity of clicked
# impressions about 5 points above its mean over all impressions (20% vs
# 15%).
_LATENT_DIM = 8
_TASTE_CORRELATION = 0.7  # user/item vectors of click vs conversion taste
_DEVICE_PROBS = (0.5, 0.38, 0.12)
_DEVICE_CLICK_EFFECT = (0.15, 0.0, -0.35)
_CLICK_BIAS = -2.0
_CLICK_AFFINITY = 1.1
_POSITION_DECAY = 0.55  # click logit falls by this times log(position)
_CONV_BIAS = -2.15
_CONV_AFFINITY = 1.1
_CONV_PRICE = -0.5  # per unit of log price above the median
_CONV_AGE = 0.015  # per year above _MEAN_AGE
_LIKE_BIAS = -0.8
_MEAN_AGE = 38.0
_AGE_MISSING_RATE = 0.02
_LOG_PRICE_MEAN = 3.0
_LOG_PRICE_STD = 0.8


def _check_int(name, value, minimum):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        kind = (
            "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        )
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")


def _check_float(name, value, minimum=None, maximum=None, strict=False):
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
    )
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            what = f"in [{minimum}, {maximum}]"
        elif minimum is not None:
            what = f"a finite number {'>' if strict else '>='} {minimum}"
        else:
            what = "a finite number"
        raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_correlated(
    n,
    correlation,
    seed=0,
    dim=100,
    num_sinusoids=10,
    scale=1.0,
    noise_std=0.1,
    return_weights=False,
):
    """Generates two regression tasks whose correlation is a parameter.

    The synthetic benchmark of the MMoE paper (section 3.2). Two orthonormal
    random vectors `u1`, `u2` give the task weights `w1 = c * u1` and
    `w2 = c * (p * u1 + sqrt(1 - p^2) * u2)`, whose cosine is exactly the
    `correlation` `p`. With `x ~ N(0, I)`, each label is

        y_i = w_i^T x + sum_j sin(alpha_j * w_i^T x + beta_j) + eps_i

    with `alpha_j, beta_j ~ N(0, 1)` shared by both tasks and
    `eps_i ~ N(0, noise_std^2)`. The sinusoids make the tasks non-linear,
    so the Pearson correlation of `y1` and `y2` grows with `p` but does not
    equal it.

    Args:
        n: int. Number of rows.
        correlation: float. Cosine `p` of the two task weight vectors, in
            `[-1, 1]`.
        seed: int. Seed of the numpy generator. Defaults to `0`.
        dim: int. Number of input features (at least 2). Defaults to `100`.
        num_sinusoids: int. Number `m` of sine terms (0 gives linear tasks).
            Defaults to `10`.
        scale: float. Norm `c` of both weight vectors. Defaults to `1.0`.
        noise_std: float. Standard deviation of the label noise. Defaults to
            `0.1` (variance 0.01 as in the paper).
        return_weights: bool. Also return the weight vectors. Defaults to
            `False`.

    Returns:
        A DataFrame with float64 columns `x_0 ... x_{dim-1}`, `y1` and `y2`;
        with `return_weights=True`, a tuple `(df, (w1, w2))` of the frame
        and the two weight vectors (numpy arrays of shape `(dim,)`).

    Example:

    >>> df = keras_mtl.datasets.synthetic_correlated(10_000, correlation=0.5)
    >>> df["y1"].corr(df["y2"])  # about 0.12: the sines weaken it
    >>> df, (w1, w2) = keras_mtl.datasets.synthetic_correlated(
    ...     1000, correlation=0.9, return_weights=True)

    References:
        - [Ma et al., 2018. Modeling Task Relationships in Multi-task
          Learning with Multi-gate Mixture-of-Experts](
          https://dl.acm.org/doi/10.1145/3219819.3220007)
    """
    _check_int("n", n, 1)
    _check_float("correlation", correlation, -1, 1)
    _check_int("seed", seed, 0)
    _check_int("dim", dim, 2)
    _check_int("num_sinusoids", num_sinusoids, 0)
    _check_float("scale", scale, 0, strict=True)
    _check_float("noise_std", noise_std, 0)
    p = float(correlation)

    rng = np.random.default_rng(seed)
    # Two orthonormal vectors: QR of a Gaussian matrix (columns of q).
    q, r = np.linalg.qr(rng.standard_normal((dim, 2)))
    q = q * np.sign(np.diag(r))  # unique, sign-stable decomposition
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (p * u1 + math.sqrt(max(0.0, 1.0 - p * p)) * u2)
    alpha = rng.standard_normal(num_sinusoids)
    beta = rng.standard_normal(num_sinusoids)

    x = rng.standard_normal((n, dim))
    labels = {}
    for name, w in (("y1", w1), ("y2", w2)):
        z = x @ w
        y = z.copy()
        for a, b in zip(alpha, beta):
            y += np.sin(a * z + b)
        y += noise_std * rng.standard_normal(n)
        labels[name] = y
    df = pd.DataFrame(x, columns=[f"x_{k}" for k in range(dim)], copy=False)
    for name, y in labels.items():
        df[name] = y
    if return_weights:
        return df, (w1, w2)
    return df


def synthetic_funnel(
    n=100_000,
    seed=0,
    num_users=2000,
    num_items=1000,
    num_categories=20,
    history_len=10,
    return_propensities=False,
):
    """Generates recommender impressions with a click -> conversion funnel.

    Users and items have latent taste vectors (8 dimensions; items cluster
    by category). Each row is one impression of an item to a user in a
    displayed slot:

    - `click` follows the user-item affinity, the item's popularity, a
      position bias falling with the slot (`-0.55 * log(position)` on the
      logit scale) and the device.
    - `conversion` needs a click. Its propensity `P(convert | click, x)`
      follows a *different but correlated* affinity (taste vectors with
      correlation 0.7), the price and the user's age. Clicked impressions
      therefore have higher conversion propensity than impressions at
      large: a model of CVR trained on clicks only sees a biased sample
      (the sample-selection bias that ESMM corrects).
    - `like` (0/1) and `watch_time` (minutes) are observed only after a
      click and are NaN on the other rows.

    Every propensity and a counterfactual conversion label for every
    impression come back with `return_propensities=True`, so entire-space
    CVR (AUC over all impressions) can be measured, which real logs never
    allow. The observed `conversion` equals `click * cf_conversion`.

    Features: `user_id`, `item_id` (int64), `item_category` (str,
    `"cat_07"`), `device` (str: `"ios"`, `"android"`, `"web"`, skewed
    towards ios), `position` (int64, 1 to 10), `user_age` (float, about 2%
    NaN), `item_price` (float > 0, lognormal, median about 20) and
    `hist_item_ids` (a list of int item ids per row, length 0 to
    `history_len`: the user's recent items, drawn from what the user tends
    to like; some users have none). Rows of the same user that show the
    same history share one list object; treat the lists as read-only.

    Args:
        n: int. Number of impressions. Defaults to `100_000`.
        seed: int. Seed of the numpy generator. Defaults to `0`.
        num_users: int. Number of users. Defaults to `2000`.
        num_items: int. Number of items. Defaults to `1000`.
        num_categories: int. Number of item categories. Defaults to `20`.
        history_len: int. Longest behaviour history. Defaults to `10`.
        return_propensities: bool. Also return the ground truth. Defaults
            to `False`.

    Returns:
        A DataFrame of features and the labels `click`, `conversion`
        (int64 0/1), `like` and `watch_time` (float64, NaN where
        `click == 0`); with `return_propensities=True` a tuple
        `(df, truth)` where `truth` (same index) holds `p_click`,
        `p_conversion` (`P(convert | click, x)` for every impression),
        `p_like` (`P(like | click, x)`) and `cf_conversion` (int64, a
        conversion label drawn from `p_conversion` for every impression).

    Example:

    >>> df, truth = keras_mtl.datasets.synthetic_funnel(
    ...     50_000, seed=1, return_propensities=True)
    >>> df["click"].mean()  # about 0.09
    >>> df.loc[df["click"] == 1, "conversion"].mean()  # about 0.2
    >>> tasks = keras_mtl.datasets.funnel_tasks()

    References:
        - [Ma et al., 2018. Entire Space Multi-Task Model: An Effective
          Approach for Estimating Post-Click Conversion Rate](
          https://arxiv.org/abs/1804.07931)
        - [Zhao et al., 2019. Recommending What Video to Watch Next: A
          Multitask Ranking System](https://dl.acm.org/doi/10.1145/3298689.3346997)
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("num_users", num_users, 1)
    _check_int("num_items", num_items, 1)
    _check_int("num_categories", num_categories, 1)
    _check_int("history_len", history_len, 0)
    d = _LATENT_DIM
    rng = np.random.default_rng(seed)

    # Items: category, taste vectors, popularity, price.
    item_cat = rng.integers(0, num_categories, num_items)
    centers = rng.standard_normal((num_categories, d))
    item_vec = 0.8 * centers[item_cat] + 0.6 * rng.standard_normal(
        (num_items, d)
    )
    rho = _TASTE_CORRELATION
    item_vec2 = rho * item_vec + math.sqrt(1 - rho * rho) * (
        rng.standard_normal((num_items, d))
    )
    item_bias = rng.normal(0.0, 0.4, num_items)
    log_price = rng.normal(_LOG_PRICE_MEAN, _LOG_PRICE_STD, num_items)
    item_popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    item_popularity = item_popularity[rng.permutation(num_items)]
    item_popularity /= item_popularity.sum()
    cat_duration = rng.normal(0.0, 0.3, num_categories)

    # Users: taste vectors, activity, main device, age, history.
    user_vec = rng.standard_normal((num_users, d))
    user_vec2 = rho * user_vec + math.sqrt(1 - rho * rho) * (
        rng.standard_normal((num_users, d))
    )
    activity = rng.lognormal(0.0, 1.0, num_users)
    activity /= activity.sum()
    user_device = rng.choice(3, num_users, p=_DEVICE_PROBS)
    user_age = np.round(np.clip(rng.normal(_MEAN_AGE, 12.0, num_users), 16, 80))
    hist_lists = _user_histories(
        rng, user_vec, item_vec, item_bias, history_len
    )

    # Impressions.
    user = rng.choice(num_users, n, p=activity)
    item = rng.choice(num_items, n, p=item_popularity)
    position = rng.integers(1, 11, n)
    device = np.where(
        rng.random(n) < 0.9,
        user_device[user],
        rng.choice(3, n, p=_DEVICE_PROBS),
    )
    age = user_age[user]
    age[rng.random(n) < _AGE_MISSING_RATE] = np.nan
    hist_offset = rng.integers(0, history_len + 1, n)

    scale = 1.0 / math.sqrt(d)
    affinity = np.einsum("nd,nd->n", user_vec[user], item_vec[item]) * scale
    affinity2 = np.einsum("nd,nd->n", user_vec2[user], item_vec2[item]) * scale
    click_logit = (
        _CLICK_BIAS
        + _CLICK_AFFINITY * affinity
        + item_bias[item]
        - _POSITION_DECAY * np.log(position)
        + np.asarray(_DEVICE_CLICK_EFFECT)[device]
    )
    conv_logit = (
        _CONV_BIAS
        + _CONV_AFFINITY * affinity2
        + _CONV_PRICE * (log_price[item] - _LOG_PRICE_MEAN)
        + _CONV_AGE * np.nan_to_num(age - _MEAN_AGE)
    )
    like_logit = _LIKE_BIAS + 0.8 * affinity + 0.4 * affinity2
    p_click = _sigmoid(click_logit)
    p_conversion = _sigmoid(conv_logit)
    p_like = _sigmoid(like_logit)

    click = (rng.random(n) < p_click).astype("int64")
    cf_conversion = (rng.random(n) < p_conversion).astype("int64")
    cf_like = (rng.random(n) < p_like).astype("float64")
    # Minutes (median ~0.4): on the scale of the binary losses, so the MSE of
    # watch time does not drown click and conversion in a summed loss.
    cf_watch = np.exp(
        3.0
        - np.log(60.0)
        + 0.35 * affinity
        + cat_duration[item_cat[item]]
        + 0.6 * rng.standard_normal(n)
    )
    clicked = click == 1
    like = np.where(clicked, cf_like, np.nan)
    watch_time = np.where(clicked, cf_watch, np.nan)

    width = max(2, len(str(num_categories - 1)))
    cat_names = np.array([f"cat_{k:0{width}d}" for k in range(num_categories)])
    df = pd.DataFrame(
        {
            "user_id": user.astype("int64"),
            "item_id": item.astype("int64"),
            "item_category": pd.Categorical.from_codes(
                item_cat[item], cat_names
            ).astype("str"),
            "device": pd.Categorical.from_codes(device, DEVICES).astype("str"),
            "position": position.astype("int64"),
            "user_age": age,
            "item_price": np.exp(log_price)[item],
            "hist_item_ids": hist_lists[user * (history_len + 1) + hist_offset],
            "click": click,
            "conversion": click * cf_conversion,
            "like": like,
            "watch_time": watch_time,
        }
    )
    if not return_propensities:
        return df
    truth = pd.DataFrame(
        {
            "p_click": p_click,
            "p_conversion": p_conversion,
            "p_like": p_like,
            "cf_conversion": cf_conversion,
        },
        index=df.index,
    )
    return df, truth


def _user_histories(rng, user_vec, item_vec, item_bias, history_len):
    """Every history a row can show, as an object array of lists.

    Each user gets `2 * history_len` distinct items drawn (Gumbel top-k)
    with probability growing with affinity and popularity, and a history
    length from 0 to `history_len`. A row shows the window starting at a
    random offset; entry `user * (history_len + 1) + offset` holds it.
    """
    num_users, d = user_vec.shape
    num_items = item_vec.shape[0]
    lengths = rng.integers(0, history_len + 1, num_users)
    pool = min(2 * history_len, num_items)
    if pool > 0:
        logits = 2.0 * (user_vec @ item_vec.T) / math.sqrt(d) + item_bias
        logits = logits + rng.gumbel(size=logits.shape)
        top = np.argpartition(-logits, pool - 1, axis=1)[:, :pool]
        order = np.argsort(-np.take_along_axis(logits, top, 1), axis=1)
        seqs = np.take_along_axis(top, order, 1).tolist()
    else:
        seqs = [[] for _ in range(num_users)]
    out = np.empty(num_users * (history_len + 1), dtype=object)
    k = 0
    # Element by element: numpy would turn equal-length lists into 2-D.
    for seq, length in zip(seqs, lengths.tolist()):
        for offset in range(history_len + 1):
            out[k] = seq[offset : offset + length]
            k += 1
    return out


def funnel_tasks(like=False):
    """The tasks of `synthetic_funnel`: click, then what follows a click.

    Args:
        like: bool. Also include the `like` task. Defaults to `False`.

    Returns:
        A list of `keras_mtl.Task`: `click` (binary), `conversion` and
        (optionally) `like` (binary on the click space) and `watch_time`
        (regression on the click space).

    Example:

    >>> tasks = keras_mtl.datasets.funnel_tasks(like=True)
    """
    tasks = [
        Task("click"),
        Task("conversion", space="click"),
        Task("watch_time", "regression", space="click"),
    ]
    if like:
        tasks.insert(2, Task("like", space="click"))
    return tasks
