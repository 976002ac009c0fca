"""Where one training step of keras-mtl's fast path spends its time.

    python bench/profile_step.py [--model mmoe] [--batch-size 1024]

Times, per batch of the funnel data (the training suite's features), the
pieces of a step in isolation, each compiled the way `fit` compiles it
(XLA, `steps_per_execution` style loops of `--steps` steps inside one
`tf.function`), and reports milliseconds of wall and CPU time per step:

1. the input pipeline alone (index gather of the encoded arrays);
2. the forward pass;
3. forward + backward (gradients, no update);
4. forward + backward + Adam update (the bare train step);
5. `Model.fit` itself (adds the masked per-task losses, the callbacks
   and Keras' loop), measured as the median epoch / steps;
6. `Model.fit` with keras-mtl's default training metrics (per-task AUC,
   logloss, PCOC).

The differences between consecutive lines are the cost of each part. The
report goes to stdout as a Markdown table (paste it into
docs/BENCHMARKS.md) and as JSON to bench/results/profile_step.json.
"""

import argparse
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import train_suite  # noqa: E402


def _timed(fn, repeats):
    """Median wall and CPU seconds of `fn()` over `repeats` calls."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmoe", choices=("mmoe", "ple"))
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    opts = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from keras_mtl import data as data_lib
    from keras_mtl import models

    args = argparse.Namespace(
        dataset="funnel", model=opts.model, rows=opts.rows, seed=0
    )
    keras.utils.set_random_seed(0)
    train, _, vocab, dense, labels = train_suite._load(args)
    features, tasks, model = train_suite.keras_mtl_model(
        args, vocab, dense, labels
    )
    twin = models.encoded_model(model)
    bs, steps = opts.batch_size, opts.steps
    ds = data_lib.from_dataframe(
        train,
        features,
        tasks,
        bs,
        shuffle=True,
        encode_with=model,
        pad_remainder=True,
    ).repeat()
    iterator = iter(ds)
    x, y, sw = next(iterator)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(twin.trainable_variables)
    variables = twin.trainable_variables

    def loss_of(out):
        total = 0.0
        for task in tasks:
            pred = tf.reshape(out[task.name], (-1,))
            label = y[task.name]
            weight = sw[task.name]
            if task.kind == "binary":
                pred = tf.clip_by_value(pred, 1e-7, 1 - 1e-7)
                per = -(
                    label * tf.math.log(pred)
                    + (1 - label) * tf.math.log(1 - pred)
                )
            else:
                per = tf.square(pred - label)
            total += tf.reduce_sum(per * weight) / tf.maximum(
                tf.reduce_sum(weight), 1.0
            )
        return total

    @tf.function(jit_compile=True)
    def forward():
        return twin(x, training=True)

    @tf.function(jit_compile=True)
    def gradients():
        with tf.GradientTape() as tape:
            loss = loss_of(twin(x, training=True))
        return tape.gradient(loss, variables)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_of(twin(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def loop(fn):
        return lambda: [fn() for _ in range(steps)][-1]

    rows = []
    w, c = _timed(lambda: [next(iterator) for _ in range(steps)], opts.repeats)
    rows.append(("input pipeline (gather one batch)", w, c))
    for name, fn in (
        ("forward", forward),
        ("forward + backward", gradients),
        ("forward + backward + Adam (bare step)", step),
    ):
        w, c = _timed(loop(fn), opts.repeats)
        rows.append((name, w, c))

    def fit_step(**compile_kwargs):
        """Wall and CPU seconds per `steps` steps of `fit`, steady state."""
        models.compile_model(
            twin, tasks, steps_per_execution=steps, **compile_kwargs
        )
        clock = train_suite._Clock()
        clock.begin()
        epoch_steps = -(-len(train) // bs)
        twin.fit(
            ds,
            steps_per_epoch=epoch_steps,
            epochs=3,
            verbose=0,
            callbacks=[train_suite._keras_clock_callback(keras, clock)],
        )
        steady = clock.epochs[1:]
        return tuple(
            statistics.median(e[key] for e in steady) * steps / epoch_steps
            for key in ("wall_s", "cpu_s")
        )

    rows.append(("Model.fit, losses only", *fit_step(weighted_metrics=None)))
    rows.append(("Model.fit, losses + default metrics", *fit_step()))
    dense_params = train_suite._dense_params_keras(model)
    flops = 6 * dense_params * bs
    table = [
        f"Profile of one {opts.model} training step, batch {bs} "
        f"({dense_params:,} dense weights, {flops / 1e6:.0f} MFLOP per "
        "step forward + backward):",
        "",
        "| part | wall ms / step | CPU ms / step |",
        "|---|---:|---:|",
    ]
    for name, w, c in rows:
        table.append(
            f"| {name} | {1000 * w / steps:.2f} | {1000 * c / steps:.2f} |"
        )
    print("\n".join(table))
    out = os.path.join(train_suite.bench.RESULTS_DIR, "profile_step.json")
    with open(out, "w") as f:
        json.dump(
            {
                "model": opts.model,
                "batch_size": bs,
                "dense_params": dense_params,
                "load_average": os.getloadavg(),
                "rows": [
                    {
                        "part": n,
                        "wall_ms": 1000 * w / steps,
                        "cpu_ms": 1000 * c / steps,
                    }
                    for n, w, c in rows
                ],
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
