"""ESMM head: CTR, CVR and CTCVR probabilities from two logits."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_mtl")
class ESMMHead(keras.layers.Layer):
    """Entire Space Multi-task Model head: `pCTCVR = pCTR * pCVR`.

    ESMM trains CTR and CTCVR on every impression, so the CVR tower is
    learned on the entire impression space and gets gradient only through
    the product `pCTCVR = pCTR * pCVR` (a CVR loss is not needed and would
    reintroduce the sample selection bias). Compile the model with losses on
    the CTR and CTCVR outputs; the CVR output is for serving.

    The probabilities are computed in float32 whatever the dtype policy and
    then cast to the compute dtype. `sigmoid` is accurate to an ulp in float32
    over the whole range (`sigmoid(-40) = 4.2e-18`, `sigmoid(40) = 1`), and so
    is the product of two of them, down to `~1e-38` (the product only
    underflows, to an exact 0, for logits summing below about -100). This is
    more accurate than `exp(log_sigmoid(ctr) + log_sigmoid(cvr))`, whose
    relative error grows with `|log p|` (about 2e-6 at `p ~ 1e-18`). Gradients
    are finite everywhere: `d pCTCVR / d cvr = pCTCVR * (1 - pCVR)`.

    Call arguments:
        inputs: list `[ctr_logit, cvr_logit]` of tensors of shape
            `(batch, 1)` holding logits (not probabilities).

    Returns:
        A tuple `(p_ctr, p_cvr, p_ctcvr)` of tensors of shape `(batch, 1)`,
        float32 under every dtype policy (a `mixed_bfloat16` probability
        keeps only 3 significant digits).

    Example:

    ```python
    features = keras.Input((16,))
    ctr_logit = keras.layers.Dense(1)(keras_mtl.layers.MLP([8])(features))
    cvr_logit = keras.layers.Dense(1)(keras_mtl.layers.MLP([8])(features))
    p_ctr, p_cvr, p_ctcvr = keras_mtl.layers.ESMMHead()(
        [ctr_logit, cvr_logit]
    )
    model = keras.Model(
        features, {"ctr": p_ctr, "cvr": p_cvr, "ctcvr": p_ctcvr}
    )
    # No CVR loss: CVR learns through CTCVR on the entire space.
    model.compile(
        optimizer="adam",
        loss={"ctr": "binary_crossentropy", "ctcvr": "binary_crossentropy"},
    )
    ```

    References:
        - Ma et al., "Entire Space Multi-Task Model: An Effective Approach for
          Estimating Post-Click Conversion Rate", SIGIR 2018,
          https://arxiv.org/abs/1804.07931
    """

    def build(self, input_shape):
        if (
            not isinstance(input_shape, (list, tuple))
            or len(input_shape) != 2
            or not isinstance(input_shape[0], (list, tuple))
        ):
            raise ValueError(
                "`ESMMHead` expects a list of two tensors [ctr_logit, "
                f"cvr_logit]. Received: input_shape={input_shape}"
            )
        self.built = True

    def call(self, inputs):
        ctr_logit, cvr_logit = inputs
        ctr_logit = ops.cast(ctr_logit, "float32")
        cvr_logit = ops.cast(cvr_logit, "float32")
        p_ctr = ops.sigmoid(ctr_logit)
        p_cvr = ops.sigmoid(cvr_logit)
        p_ctcvr = p_ctr * p_cvr
        return p_ctr, p_cvr, p_ctcvr

    def compute_output_shape(self, input_shape):
        ctr_shape, cvr_shape = input_shape
        return tuple(ctr_shape), tuple(cvr_shape), tuple(ctr_shape)
