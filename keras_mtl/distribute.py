"""Distributed training with `tf.distribute` (TensorFlow backend only).

Two paths:

- `train`: a custom distributed training loop that works with every
  `tf.distribute` strategy, including `MultiWorkerMirroredStrategy`, where
  Keras 3 `model.fit` fails ("Attempt to convert a value (PerReplica ...)",
  keras-team/keras#20585). Each task's loss is the masked mean over the
  task's sample space of the *global* batch: the numerator `sum(w * l)` and
  the denominator `sum(w)` are summed over all replicas before dividing, so
  a replica that happens to hold few clicked rows does not over-weight them.
  It checkpoints every `checkpoint_every` steps and resumes from the latest
  checkpoint on restart.
- `build_and_compile`: builds and compiles a model under
  `strategy.scope()` for `model.fit` with `tf.distribute.MirroredStrategy`
  (one machine, several devices). Note that `fit` reduces each task's
  `mean_with_sample_weight` loss per replica and then averages the
  replicas, which is not the global masked mean when the replicas hold
  different numbers of in-space rows; use `train` where that matters.

`make_strategy` builds the strategy of a process from `TF_CONFIG`
(validated by `parse_tf_config`), and `python -m keras_mtl train
--distributed` runs `train` on a configured zoo model (see
`keras_mtl.runner`). See docs/distributed.md for the cluster set-up.
"""

import json
import logging
import os

import keras

from keras_mtl import losses as losses_lib
from keras_mtl.task import validate_tasks

logger = logging.getLogger(__name__)


def _check_backend():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "keras_mtl.distribute needs the TensorFlow backend. Received: "
            f"KERAS_BACKEND={keras.backend.backend()!r}"
        )


def _sum_losses(tasks):
    """Per-task losses that return `sum(w * l)` for a batch."""
    out = {}
    for task in tasks:
        cls = type(losses_lib.task_loss(task))
        out[task.name] = cls(reduction="sum", name=task.name)
    return out


def masked_loss_parts(tasks, y, y_pred, sample_weight, sum_losses=None):
    """Numerators `sum(w * l)` and denominators `sum(w)` of each task.

    Args:
        tasks: list of `keras_mtl.Task`.
        y: dict of labels by task name.
        y_pred: dict of model outputs by task name.
        sample_weight: dict of per-task sample weights by task name.
        sum_losses: optional dict from `_sum_losses` (built when omitted).

    Returns:
        `(numerators, denominators)`: two lists of float32 scalars, in task
        order.
    """
    import tensorflow as tf

    sum_losses = sum_losses or _sum_losses(tasks)
    nums, dens = [], []
    for task in tasks:
        w = tf.cast(sample_weight[task.name], tf.float32)
        nums.append(
            tf.cast(
                sum_losses[task.name](
                    y[task.name], y_pred[task.name], sample_weight=w
                ),
                tf.float32,
            )
        )
        dens.append(tf.reduce_sum(w))
    return nums, dens


def global_masked_losses(tasks, y, y_pred, sample_weight, sum_losses=None):
    """Each task's masked mean over the global batch, inside a replica.

    Must be called in a replica context (inside `strategy.run`, or outside
    any strategy, where it is the plain masked mean). The per-replica
    numerators `sum(w * l)` and denominators `sum(w)` are all-reduced (sum)
    across replicas, so every replica gets `sum over all replicas of w * l
    / sum over all replicas of w`, the same value `fit` computes on one
    device for the concatenated global batch (0 when no row of the global
    batch is in the task's space).

    Returns:
        `(global_losses, local_parts)`: a list of the global per-task losses
        (no gradient flows through them) and a list of this replica's
        `sum(w * l) / global sum(w)`, whose gradients, summed over replicas,
        are the gradients of the global losses.
    """
    import tensorflow as tf

    nums, dens = masked_loss_parts(tasks, y, y_pred, sample_weight, sum_losses)
    ctx = tf.distribute.get_replica_context()
    reduced = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM,
        [tf.stop_gradient(n) for n in nums] + dens,
    )
    g_nums, g_dens = reduced[: len(tasks)], reduced[len(tasks) :]
    g_dens = [tf.stop_gradient(d) for d in g_dens]
    global_losses = [
        tf.math.divide_no_nan(n, d) for n, d in zip(g_nums, g_dens)
    ]
    local_parts = [tf.math.divide_no_nan(n, d) for n, d in zip(nums, g_dens)]
    return global_losses, local_parts


def is_chief(strategy):
    """Whether this process is the chief of `strategy`'s cluster.

    The `chief` task, else worker 0 of a cluster without a chief; always
    True for a single-process strategy (no cluster).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in ("chief", None):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


_TF_CONFIG_KEYS = ("cluster", "task", "environment", "rpc_layer")
_TASK_TYPES = ("chief", "worker")


def _tf_config_error(what, received):
    return ValueError(f"Malformed `TF_CONFIG`: {what}. Received: {received}")


def _check_address(role, address):
    host, sep, port = (
        address.rpartition(":") if isinstance(address, str) else ("", "", "")
    )
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise _tf_config_error(
            f"every address of `cluster.{role}` must be a 'host:port' string",
            f"cluster.{role} address {address!r}",
        )


def parse_tf_config(value=None):
    """Validates a `TF_CONFIG` for `MultiWorkerMirroredStrategy`.

    Checks what TensorFlow would otherwise report late or not at all: JSON,
    a `cluster` of `chief` (at most one) and `worker` task types, each a
    non-empty list of distinct `host:port` addresses, and a `task` whose
    `type` is in the cluster and whose `index` is in range.

    Args:
        value: str or None. The JSON text. Defaults to the `TF_CONFIG`
            environment variable.

    Returns:
        None when `TF_CONFIG` is unset or empty, else a dict with
        `cluster`, `task_type`, `task_id` and `num_workers` (every task
        of the cluster, the chief included).

    Example:

    >>> keras_mtl.distribute.parse_tf_config(
    ...     '{"cluster": {"worker": ["h0:2222", "h1:2222"]},'
    ...     ' "task": {"type": "worker", "index": 1}}')["num_workers"]
    2
    """
    if value is None:
        value = os.environ.get("TF_CONFIG")
    if value is None or not str(value).strip():
        return None
    try:
        config = json.loads(value)
    except json.JSONDecodeError as err:
        raise _tf_config_error(f"not valid JSON ({err})", repr(value)) from None
    if not isinstance(config, dict):
        raise _tf_config_error("the top level must be a mapping", repr(value))
    unknown = sorted(set(config) - set(_TF_CONFIG_KEYS))
    if unknown:
        raise _tf_config_error(
            f"unknown key(s) {unknown}; known: {list(_TF_CONFIG_KEYS)}",
            repr(value),
        )
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error(
            "`cluster` must be a non-empty mapping from task type to a list "
            "of 'host:port' addresses",
            f"cluster={cluster!r}",
        )
    unknown = sorted(set(cluster) - set(_TASK_TYPES))
    if unknown:
        raise _tf_config_error(
            f"`cluster` has task type(s) {unknown}; MultiWorkerMirrored"
            "Strategy takes 'chief' (at most one) and 'worker' (parameter "
            "servers and evaluators are not supported)",
            f"cluster={cluster!r}",
        )
    addresses = []
    for role, tasks in cluster.items():
        if not isinstance(tasks, list) or not tasks:
            raise _tf_config_error(
                f"`cluster.{role}` must be a non-empty list of 'host:port' "
                "strings",
                f"cluster.{role}={tasks!r}",
            )
        for address in tasks:
            _check_address(role, address)
        addresses.extend(tasks)
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error(
            "`cluster.chief` holds at most one address",
            f"cluster.chief={cluster['chief']!r}",
        )
    duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
    if duplicates:
        raise _tf_config_error(
            f"address(es) {duplicates} appear more than once in `cluster`",
            f"cluster={cluster!r}",
        )
    task = config.get("task")
    if not isinstance(task, dict):
        raise _tf_config_error(
            '`task` must be a mapping {"type": ..., "index": ...}',
            f"task={task!r}",
        )
    task_type = task.get("type")
    if task_type not in cluster:
        raise _tf_config_error(
            f"`task.type` must be a task type of `cluster` {sorted(cluster)}",
            f"task.type={task_type!r}",
        )
    index = task.get("index")
    size = len(cluster[task_type])
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < size
    ):
        raise _tf_config_error(
            f"`task.index` must be an integer in [0, {size}) (the "
            f"{size} address(es) of `cluster.{task_type}`)",
            f"task.index={index!r}",
        )
    return {
        "cluster": cluster,
        "task_type": task_type,
        "task_id": index,
        "num_workers": len(addresses),
    }


def make_strategy():
    """The strategy of this process, from the `TF_CONFIG` variable.

    A `TF_CONFIG` whose cluster has two or more tasks gives a
    `tf.distribute.MultiWorkerMirroredStrategy` (one replica per worker on
    CPU; every local GPU of each worker otherwise). No `TF_CONFIG`, or one
    with a single task, gives a `tf.distribute.MirroredStrategy` over the
    local devices (every visible GPU, else the CPU). `TF_CONFIG` is
    validated first (`parse_tf_config`). Call this at the start of the
    program, before any other TensorFlow op: `MultiWorkerMirroredStrategy`
    configures the runtime's collective ops.

    Returns:
        A `tf.distribute.Strategy`.
    """
    _check_backend()
    import tensorflow as tf

    parsed = parse_tf_config()
    if parsed is not None and parsed["num_workers"] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def _worker_dir(checkpoint_dir, strategy):
    if is_chief(strategy):
        return checkpoint_dir
    resolver = strategy.cluster_resolver
    # Non-chief workers must take part in the save (it may run collective
    # ops) but write to a private scratch directory.
    return os.path.join(
        checkpoint_dir, f".worker_{resolver.task_type}_{resolver.task_id}"
    )


def train(
    model_fn,
    dataset_fn,
    tasks,
    strategy=None,
    epochs=1,
    steps_per_epoch=None,
    checkpoint_dir=None,
    checkpoint_every=100,
    learning_rate=1e-3,
    optimizer_fn=None,
    max_to_keep=3,
    on_step=None,
):
    """Trains a multi-task model with a custom `tf.distribute` loop.

    Works with any `tf.distribute` strategy; its purpose is
    `tf.distribute.MultiWorkerMirroredStrategy`, which Keras 3 `fit` does
    not support. Each task's loss is masked exactly as `fit` masks it
    (`reduction="mean_with_sample_weight"` with the per-task sample
    weights of `keras_mtl.data`), but over the *global* batch: `sum(w * l)`
    and `sum(w)` are summed over all replicas before the division. The
    total loss is `sum(task.weight * task_loss)` plus `model.losses`
    (regularisers, KL bounds; averaged over replicas).

    Every worker runs the same call. When `checkpoint_dir` is given, a
    `tf.train.CheckpointManager` saves model, optimizer and step every
    `checkpoint_every` steps and at the end; on start the latest checkpoint
    there is restored and training continues from its step. The data
    position is restored by re-creating the dataset of the current epoch
    and skipping the batches already done, so `dataset_fn` must be
    deterministic for an exact resume. In a cluster `checkpoint_dir` must
    be a shared path (GCS, NFS, ...): the chief writes there, other workers
    write to a scratch sub-directory and every worker restores from the
    chief's checkpoints.

    Args:
        model_fn: callable `() -> keras.Model` whose outputs are a dict by
            task name. Called under `strategy.scope()`.
        dataset_fn: callable `(tf.distribute.InputContext) -> tf.data.Dataset`
            yielding `(x, y, sw)` batches of the *per-replica* batch size
            (`input_context.get_per_replica_batch_size(global_batch)`), e.g.
            `keras_mtl.data.from_csv(..., shard=(ctx.num_input_pipelines,
            ctx.input_pipeline_id))`. Use `drop_remainder=True`: every
            replica must run the same number of steps.
        tasks: list of `keras_mtl.Task`.
        strategy: a `tf.distribute.Strategy`. Defaults to the current one
            (`tf.distribute.get_strategy()`, a single device).
        epochs: int. Passes over the data. Defaults to `1`.
        steps_per_epoch: int or None. Steps per epoch; `None` runs until
            the data is exhausted (every worker must then see the same
            number of batches). Defaults to `None`.
        checkpoint_dir: str or None. Where to save and resume from.
        checkpoint_every: int. Save every this many steps. Defaults to
            `100`.
        learning_rate: float. Adam learning rate when `optimizer_fn` is
            None. Defaults to `1e-3`.
        optimizer_fn: optional callable `() -> keras.optimizers.Optimizer`,
            called under `strategy.scope()`.
        max_to_keep: int. Checkpoints kept. Defaults to `3`.
        on_step: optional callable `(step, logs)` called after every step
            with the global step (1-based) and a dict of floats: `loss` and
            one entry per task name.

    Returns:
        `(model, history)`: the trained model and a dict of lists (`loss`
        and per-task losses) with one value per step run in this call.

    Example:

    >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
    >>> def dataset_fn(ctx):
    ...     return keras_mtl.data.from_csv(
    ...         "gs://bucket/train-*.csv", features, tasks,
    ...         batch_size=ctx.get_per_replica_batch_size(4096),
    ...         shard=(ctx.num_input_pipelines, ctx.input_pipeline_id),
    ...         drop_remainder=True)
    >>> model, history = keras_mtl.distribute.train(
    ...     lambda: keras_mtl.models.mmoe(features, tasks), dataset_fn,
    ...     tasks, strategy, epochs=2, checkpoint_dir="gs://bucket/ckpt")
    """
    _check_backend()
    import tensorflow as tf

    tasks = validate_tasks(tasks)
    for name, value, minimum in (
        ("epochs", epochs, 1),
        ("checkpoint_every", checkpoint_every, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"`{name}` must be an integer. Received: {value!r}"
            )
        if value < minimum:
            raise ValueError(
                f"`{name}` must be >= {minimum}. Received: {name}={value!r}"
            )
    if steps_per_epoch is not None and (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, int)
        or steps_per_epoch < 1
    ):
        raise ValueError(
            "`steps_per_epoch` must be a positive integer or None. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )
    strategy = strategy or tf.distribute.get_strategy()
    names = [t.name for t in tasks]
    weights = [t.weight for t in tasks]
    sum_losses = _sum_losses(tasks)

    with strategy.scope():
        model = model_fn()
        missing = [n for n in names if n not in model.output_names]
        if missing:
            raise ValueError(
                f"The model has no output for task(s) {missing}. "
                f"Model outputs: {list(model.output_names)}"
            )
        optimizer = (
            optimizer_fn()
            if optimizer_fn is not None
            else keras.optimizers.Adam(learning_rate)
        )
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    num_replicas = strategy.num_replicas_in_sync

    manager = None
    if checkpoint_dir is not None:
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=step_var
        )
        latest = tf.train.latest_checkpoint(checkpoint_dir)
        if latest:
            checkpoint.restore(latest).expect_partial()
            logger.info(
                "Resumed from %s at step %d.", latest, int(step_var.numpy())
            )
        manager = tf.train.CheckpointManager(
            checkpoint,
            _worker_dir(checkpoint_dir, strategy),
            max_to_keep=max_to_keep,
        )

    def replica_step(batch):
        x, y, sw = batch
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            global_losses, local_parts = global_masked_losses(
                tasks, y, y_pred, sw, sum_losses
            )
            local = tf.add_n(
                [w * part for w, part in zip(weights, local_parts)]
            )
            if model.losses:
                local += tf.add_n(model.losses) / num_replicas
        grads = tape.gradient(local, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        total = tf.add_n([w * gl for w, gl in zip(weights, global_losses)])
        return [total, *global_losses]

    @tf.function
    def train_step(iterator):
        out = strategy.run(replica_step, args=(next(iterator),))
        # Every replica holds the same global values: take replica 0's.
        out = [strategy.experimental_local_results(o)[0] for o in out]
        step_var.assign_add(1)
        return out

    history = {"loss": [], **{n: [] for n in names}}
    start = int(step_var.numpy())
    if steps_per_epoch is not None:
        first_epoch, skip = divmod(start, steps_per_epoch)
    else:
        first_epoch, skip = 0, start
        if start:
            logger.warning(
                "Resuming at step %d with steps_per_epoch=None: the "
                "batches done are skipped from the first epoch only.",
                start,
            )
    for epoch in range(first_epoch, epochs):

        def per_worker(ctx, _skip=skip):
            ds = dataset_fn(ctx)
            return ds.skip(_skip) if _skip else ds

        dist = strategy.distribute_datasets_from_function(per_worker)
        iterator = iter(dist)
        done = skip
        skip = 0
        while steps_per_epoch is None or done < steps_per_epoch:
            try:
                out = train_step(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                break
            done += 1
            step = int(step_var.numpy())
            logs = {"loss": float(out[0])}
            logs.update({n: float(v) for n, v in zip(names, out[1:])})
            for key, value in logs.items():
                history[key].append(value)
            if on_step is not None:
                on_step(step, logs)
            if manager is not None and step % checkpoint_every == 0:
                manager.save(checkpoint_number=step)
        logger.info(
            "Epoch %d done at step %d.", epoch + 1, int(step_var.numpy())
        )
    final = int(step_var.numpy())
    if manager is not None and final != start and final % checkpoint_every:
        manager.save(checkpoint_number=final)
    return model, history


def build_and_compile(build_fn, tasks, strategy=None, **compile_kwargs):
    """Builds and compiles a model under `strategy.scope()` for `fit`.

    For `tf.distribute.MirroredStrategy` (several devices of one machine),
    the Keras 3 documented path: `model.fit` then splits every batch over
    the replicas. `fit` averages each replica's masked mean; where the
    replicas hold different numbers of in-space rows that differs from the
    global masked mean that `train` computes.

    Args:
        build_fn: callable `() -> keras.Model`, e.g.
            `lambda: keras_mtl.models.mmoe(features, tasks)`.
        tasks: list of `keras_mtl.Task`.
        strategy: a `tf.distribute.Strategy`. Defaults to
            `tf.distribute.MirroredStrategy()` over every visible device.
        **compile_kwargs: passed to `keras_mtl.models.compile_model`.

    Returns:
        The compiled model; call `model.fit(dataset)` outside or inside the
        scope.

    Example:

    >>> model = keras_mtl.distribute.build_and_compile(
    ...     lambda: keras_mtl.models.mmoe(features, tasks), tasks)
    >>> model.fit(keras_mtl.data.from_dataframe(df, features, tasks))
    """
    _check_backend()
    import tensorflow as tf

    from keras_mtl.models.zoo import compile_model

    strategy = strategy or tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = build_fn()
        compile_model(model, tasks, **compile_kwargs)
    return model


def _shard_of(ctx):
    if ctx.num_input_pipelines == 1:
        return None
    return (ctx.num_input_pipelines, ctx.input_pipeline_id)


def dataframe_dataset_fn(
    df, features, tasks, global_batch_size, shuffle=True, seed=0, repeat=True
):
    """A `dataset_fn` for `train` over an in-memory DataFrame.

    Input pipeline `i` of `n` (one per worker) takes rows `i, i + n, ...`
    and batches them by the per-replica batch size with
    `drop_remainder=True`; `repeat=True` repeats the stream (reshuffled
    every pass), so pass `steps_per_epoch` to `train`.

    Args:
        df: pandas DataFrame (the same on every worker).
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        global_batch_size: int. Batch size summed over all replicas.
        shuffle: bool. Defaults to `True`.
        seed: int. Defaults to `0`.
        repeat: bool. Defaults to `True`.

    Returns:
        A callable `(tf.distribute.InputContext) -> tf.data.Dataset`.
    """
    from keras_mtl import data as data_lib

    def dataset_fn(ctx):
        shard = _shard_of(ctx)
        part = df if shard is None else df.iloc[shard[1] :: shard[0]]
        ds = data_lib.from_dataframe(
            part,
            features,
            tasks,
            batch_size=ctx.get_per_replica_batch_size(global_batch_size),
            shuffle=shuffle,
            seed=seed,
            drop_remainder=True,
        )
        return ds.repeat() if repeat else ds

    return dataset_fn


def files_dataset_fn(
    file_pattern,
    features,
    tasks,
    global_batch_size,
    fmt="tfrecord",
    shuffle=True,
    seed=0,
    repeat=True,
    **reader_kwargs,
):
    """A `dataset_fn` for `train` over sharded files, one part per worker.

    Input pipeline `i` of `n` (one per worker) reads
    `keras_mtl.data.from_tfrecord` / `from_csv` / `from_parquet` with
    `shard=(n, i)`: every `n`-th file starting at `i`. TFRecord input falls
    back to sharding by record when there are fewer files than workers
    (`shard_by="auto"`); CSV and Parquet need at least as many files as
    workers. Batches have the per-replica batch size and
    `drop_remainder=True`; `repeat=True` repeats the stream (reshuffled
    every pass), so pass `steps_per_epoch` to `train`: workers whose shards
    differ in size still run the same number of steps.

    Args:
        file_pattern: str or list of str. Glob pattern(s) of the files.
        features: list of feature specs.
        tasks: list of `keras_mtl.Task`.
        global_batch_size: int. Batch size summed over all replicas.
        fmt: `"tfrecord"`, `"csv"` or `"parquet"`. Defaults to
            `"tfrecord"`.
        shuffle: bool. Defaults to `True`.
        seed: int. Defaults to `0`.
        repeat: bool. Defaults to `True`.
        **reader_kwargs: passed to the reader (`compression=`,
            `chunk_size=`, ...).

    Returns:
        A callable `(tf.distribute.InputContext) -> tf.data.Dataset`.

    Example:

    >>> dataset_fn = keras_mtl.distribute.files_dataset_fn(
    ...     "/data/train/part-*.tfrecord.gz", features, tasks, 4096,
    ...     compression="GZIP")
    >>> keras_mtl.distribute.train(
    ...     model_fn, dataset_fn, tasks, strategy, steps_per_epoch=10_000)
    """
    from keras_mtl import data as data_lib

    readers = {
        "tfrecord": data_lib.from_tfrecord,
        "csv": data_lib.from_csv,
        "parquet": data_lib.from_parquet,
    }
    if fmt not in readers:
        raise ValueError(
            f"`fmt` must be one of {sorted(readers)}. Received: fmt={fmt!r}"
        )
    reader = readers[fmt]

    def dataset_fn(ctx):
        ds = reader(
            file_pattern,
            features,
            tasks,
            batch_size=ctx.get_per_replica_batch_size(global_batch_size),
            shuffle=shuffle,
            seed=seed,
            shard=_shard_of(ctx),
            drop_remainder=True,
            **reader_kwargs,
        )
        return ds.repeat() if repeat else ds

    return dataset_fn


def free_ports(n):
    """`n` distinct free TCP ports on 127.0.0.1, for a local loopback
    cluster (`TF_CONFIG` of workers on one machine: tests, benchmarks)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
