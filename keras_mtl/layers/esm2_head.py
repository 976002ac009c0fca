"""ESM2 head: the post-click behaviour decomposition of ESM2."""

import keras
from keras import ops

ESM2_PROBABILITIES = (
    "ctr",
    "avr",
    "cvr_daction",
    "cvr_oaction",
    "ctavr",
    "cvr",
    "ctcvr",
)


@keras.saving.register_keras_serializable(package="keras_mtl")
class ESM2Head(keras.layers.Layer):
    """ESM2 head: the purchase path decomposed over post-click actions.

    ESM2 models the path impression -> click -> {deterministic action
    (DAction: add to cart, wish list) | other action (OAction)} ->
    purchase. Four logits give the conditional probabilities

    - `ctr = p(click)`,
    - `avr = p(DAction | click)`,
    - `cvr_daction = p(purchase | DAction)`,
    - `cvr_oaction = p(purchase | OAction)`,

    and the head composes the probabilities that have labels on every
    impression:

    - `ctavr = ctr * avr` (click and DAction),
    - `cvr = avr * cvr_daction + (1 - avr) * cvr_oaction`
      (`p(purchase | click)`, by total probability over the two disjoint
      post-click branches),
    - `ctcvr = ctr * cvr` (click and purchase).

    ESM2 trains `ctr`, `ctavr` and `ctcvr` with log-losses over the entire
    impression space, so every conditional is learned without the
    clicked-sample selection bias (and the sparse purchase label borrows
    strength from the denser DAction label).

    Everything is computed in float32 whatever the dtype policy and then
    cast to the compute dtype. Since `cvr` is a convex combination of two
    probabilities it lies between them, and every output is in `[0, 1]`.

    Call arguments:
        inputs: list `[ctr_logit, avr_logit, cvr_daction_logit,
            cvr_oaction_logit]` of tensors of shape `(batch, 1)`.

    Returns:
        A dict of `(batch, 1)` probabilities keyed by `"ctr"`, `"avr"`,
        `"cvr_daction"`, `"cvr_oaction"`, `"ctavr"`, `"cvr"`, `"ctcvr"`.

    Example:

    ```python
    x = keras.Input((16,))
    logits = [keras.layers.Dense(1)(x) for _ in range(4)]
    p = keras_mtl.layers.ESM2Head()(logits)
    model = keras.Model(x, {k: p[k] for k in ("ctr", "ctavr", "ctcvr")})
    ```

    References:
        - Wen et al., "Entire Space Multi-Task Modeling via Post-Click
          Behavior Decomposition for Conversion Rate Prediction", SIGIR
          2020, https://arxiv.org/abs/1910.07099
    """

    def build(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 4
            or not all(isinstance(s, (list, tuple)) for s in input_shape)
        ):
            raise ValueError(
                "`ESM2Head` expects a list of four logits [ctr_logit, "
                "avr_logit, cvr_daction_logit, cvr_oaction_logit]. "
                f"Received: input_shape={input_shape}"
            )
        self.built = True

    def call(self, inputs):
        ctr, avr, cvr_d, cvr_o = (
            ops.sigmoid(ops.cast(logit, "float32")) for logit in inputs
        )
        cvr = avr * cvr_d + (1.0 - avr) * cvr_o
        probabilities = {
            "ctr": ctr,
            "avr": avr,
            "cvr_daction": cvr_d,
            "cvr_oaction": cvr_o,
            "ctavr": ctr * avr,
            "cvr": cvr,
            "ctcvr": ctr * cvr,
        }
        return {
            k: ops.cast(v, self.compute_dtype) for k, v in probabilities.items()
        }

    def compute_output_shape(self, input_shape):
        return {k: tuple(input_shape[0]) for k in ESM2_PROBABILITIES}
