"""Gate diagnostics for MMoE, OMoE, CGC and PLE models.

How much each task's gate uses each expert, and how evenly the experts are
used: a gate that puts all its weight on one expert, or experts that no
task uses, show up here long before they show up in the metrics.
"""

import math

import keras
import numpy as np
import pandas as pd

from keras_mtl.layers import MMoELayer
from keras_mtl.layers import PLELevel

_EPSILON = 1e-12


def gate_layers(model):
    """The `MMoELayer` and `PLELevel` layers of a model, in graph order."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, (MMoELayer, PLELevel))
    ]


def _expert_names(layer):
    if isinstance(layer, MMoELayer):
        return [f"expert_{i}" for i in range(layer.num_experts)]
    return [f"task_expert_{i}" for i in range(layer.num_task_experts)] + [
        f"shared_expert_{i}" for i in range(layer.num_shared_experts)
    ]


def _task_names(model, tasks, num_tasks):
    if tasks is not None:
        names = [t if isinstance(t, str) else t.name for t in tasks]
    elif isinstance(getattr(model, "output", None), dict):
        names = list(model.output)
    else:
        names = [f"task_{i}" for i in range(num_tasks)]
    if len(names) < num_tasks:
        raise ValueError(
            f"The gate layers have {num_tasks} tasks but {len(names)} task "
            f"names were given: {names}"
        )
    return names[:num_tasks]


def _probe(layer):
    """A copy of `layer` that also returns its gates, with its weights."""
    config = layer.get_config()
    config.update(return_gates=True, name=f"{layer.name}_gate_probe")
    return type(layer).from_config(config)


class GateProbe:
    """A model that returns the gates of every gate layer of `model`.

    Built once; `gates(x)` copies the current weights of the gate layers
    before predicting, so the probe follows training.

    Args:
        model: a functional model containing `MMoELayer` or `PLELevel`
            layers (`keras_mtl.models.mmoe`, `omoe`, `cgc`, `ple`). A
            `MultiTaskModel` is unwrapped.
    """

    def __init__(self, model):
        model = getattr(model, "model", model)
        self.layers = gate_layers(model)
        if not self.layers:
            raise ValueError(
                "The model has no gate layer (MMoELayer or PLELevel); gate "
                "diagnostics apply to MMoE, OMoE, CGC and PLE models. Layers: "
                f"{[layer.name for layer in model.layers]}"
            )
        self.model = model
        self.probes = [_probe(layer) for layer in self.layers]
        outputs = [
            probe(layer.input)[1]
            for probe, layer in zip(self.probes, self.layers)
        ]
        self.probe_model = keras.Model(model.input, outputs)

    def gates(self, x, batch_size=4096):
        """Gate weights per layer: a list of `(n, num_tasks, num_experts)`."""
        for probe, layer in zip(self.probes, self.layers):
            probe.set_weights(layer.get_weights())
        if isinstance(x, dict) and isinstance(self.model.input, dict):
            x = {name: x[name] for name in self.model.input}
        out = self.probe_model.predict(x, batch_size=batch_size, verbose=0)
        return [np.asarray(g) for g in (out if len(self.layers) > 1 else [out])]


def _entropy(p, axis=-1):
    p = np.clip(p, _EPSILON, 1.0)
    return -np.sum(p * np.log(p), axis=axis)


def summarize_gates(gates, layers, task_names):
    """Turns gate arrays into the diagnostics DataFrame (see below)."""
    rows, index = [], []
    for layer, g in zip(layers, gates):
        experts = _expert_names(layer)
        mean = g.mean(axis=0)  # (num_tasks, num_experts)
        per_sample = _entropy(g).mean(axis=0)  # (num_tasks,)
        for t in range(g.shape[1]):
            row = dict(zip(experts, mean[t].astype("float64")))
            entropy = float(_entropy(mean[t]))
            row["entropy"] = entropy
            row["normalized_entropy"] = (
                entropy / math.log(len(experts)) if len(experts) > 1 else 0.0
            )
            row["sample_entropy"] = float(per_sample[t])
            rows.append(row)
            index.append((layer.name, task_names[t]))
    frame = pd.DataFrame(rows)
    expert_cols = [c for c in frame.columns if "expert" in c]
    stats = ["entropy", "normalized_entropy", "sample_entropy"]
    frame = frame[expert_cols + stats]
    frame.index = pd.MultiIndex.from_tuples(index, names=["layer", "task"])
    return frame


def gate_diagnostics(model, x, tasks=None, batch_size=4096, probe=None):
    """Per-task expert usage of every gate layer, as a DataFrame.

    For each gate layer (`MMoELayer`; `PLELevel`, whose task gates mix the
    task's own experts and the shared experts) and each task, over the
    examples in `x`:

    - one column per expert: the task's mean gate weight on that expert
      (`expert_i` for MMoE/OMoE; `task_expert_i`, the task's own experts,
      and `shared_expert_i` for CGC/PLE; NaN where a column does not apply
      to the layer). Each row sums to 1.
    - `entropy`: the expert-utilisation entropy, `-sum_i p_i log p_i` of
      the mean gate weights `p` (nats); `log(num_experts)` means every
      expert is used equally, 0 that one expert takes everything.
    - `normalized_entropy`: `entropy / log(num_experts)`, in [0, 1].
    - `sample_entropy`: the mean over examples of each example's gate
      entropy (low: each example is routed sharply, even if different
      examples use different experts).

    Args:
        model: an MMoE, OMoE, CGC or PLE model (or its `MultiTaskModel`).
        x: model inputs (dict of arrays) or a `tf.data.Dataset`.
        tasks: list of `Task` or names, in the model's task order. Defaults
            to the model's output names.
        batch_size: int. Defaults to `4096`.
        probe: a `GateProbe` to reuse. Defaults to a new one.

    Returns:
        DataFrame indexed by `(layer, task)`.

    Example:

    >>> frame = keras_mtl.training.gate_diagnostics(model, x_val, tasks)
    >>> frame.loc["mmoe"]  # one row per task
    """
    probe = probe or GateProbe(model)
    gates = probe.gates(x, batch_size=batch_size)
    names = _task_names(probe.model, tasks, gates[0].shape[1])
    return summarize_gates(gates, probe.layers, names)


def log_gate_diagnostics(frame, writer, step):
    """Writes a `gate_diagnostics` frame to TensorBoard.

    Scalars are named `gates/<layer>/<task>/<column>`. Needs TensorFlow
    only (not the `tensorboard` package).

    Args:
        frame: DataFrame from `gate_diagnostics`.
        writer: a `tf.summary` writer, or a log directory (str).
        step: int. The TensorBoard step (e.g. the epoch).
    """
    from keras_mtl.training.callbacks import write_scalars

    scalars = {
        f"gates/{layer}/{task}/{column}": float(value)
        for (layer, task), row in frame.iterrows()
        for column, value in row.items()
        if not pd.isna(value)
    }
    write_scalars(writer, scalars, step)


class GateDiagnostics(keras.callbacks.Callback):
    """Tracks gate diagnostics at the end of every epoch.

    Computes `gate_diagnostics` on `x` each epoch, keeps the frames
    (`frames`, or `history()` as one DataFrame), adds every task's
    `gate_entropy_<layer>_<task>` (normalised entropy) to the epoch logs,
    and writes the whole frame to TensorBoard when `log_dir` is given.

    Args:
        x: model inputs to probe (keep it moderate: a few thousand rows).
        tasks: list of `Task` or names. Defaults to the output names.
        log_dir: str or None. TensorBoard directory (a `gates`
            subdirectory is used). Defaults to None.
        batch_size: int. Defaults to `4096`.

    Example:

    >>> gates = keras_mtl.training.GateDiagnostics(x_val, tasks, "logs")
    >>> model.fit(ds, epochs=5, callbacks=[gates])
    >>> gates.history().loc[4]  # the last epoch
    """

    def __init__(self, x, tasks=None, log_dir=None, batch_size=4096):
        super().__init__()
        self.x = x
        self.tasks = tasks
        self.log_dir = log_dir
        self.batch_size = batch_size
        self.frames = []
        self._probe = None
        self._writer = None

    def on_train_begin(self, logs=None):
        self._probe = GateProbe(self.model)
        if self.log_dir is not None:
            import os

            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, "gates")
            )

    def on_epoch_end(self, epoch, logs=None):
        frame = gate_diagnostics(
            self._probe.model,
            self.x,
            self.tasks,
            batch_size=self.batch_size,
            probe=self._probe,
        )
        self.frames.append(frame)
        if logs is not None:
            for (layer, task), value in frame["normalized_entropy"].items():
                logs[f"gate_entropy_{layer}_{task}"] = float(value)
        if self._writer is not None:
            log_gate_diagnostics(frame, self._writer, epoch)

    def history(self):
        """All frames as one DataFrame indexed by (epoch, layer, task)."""
        return pd.concat(
            self.frames, keys=range(len(self.frames)), names=["epoch"]
        )
