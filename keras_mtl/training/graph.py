"""Which tasks each layer and variable of a functional model serves.

Walking the functional graph back from each task's output tells which
layers the task depends on. A variable is *shared* when two or more tasks
depend on its layer (embeddings, experts, gates) and *owned* by a task when
only that task does (its tower and head). GradNorm measures gradient norms
on the last shared layer, PCGrad projects gradients of shared variables and
learning-rate multipliers scale updates of owned variables.
"""


def _output_tensors(model, task_names):
    outputs = getattr(model, "output", None)
    if not isinstance(outputs, dict):
        raise ValueError(
            "Loss balancing needs a functional model with a dict of outputs "
            "keyed by task name (as the `keras_mtl.models` builders return). "
            f"Received: {type(model).__name__} with outputs of type "
            f"{type(outputs).__name__}"
        )
    missing = [name for name in task_names if name not in outputs]
    if missing:
        raise ValueError(
            f"The model has no output for task(s) {missing}. Model outputs: "
            f"{list(outputs)}"
        )
    return {name: outputs[name] for name in task_names}


def _ancestor_operations(tensor):
    """Every operation (layer) `tensor` depends on, by id."""
    found = {}
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        history = getattr(t, "_keras_history", None)
        if history is None:
            continue
        operation, node_index, _ = history
        found[id(operation)] = operation
        node = operation._inbound_nodes[node_index]
        stack.extend(node.input_tensors)
    return found


def layer_tasks(model, task_names):
    """Maps each top-level layer name to the tasks whose output it feeds.

    Args:
        model: a functional `keras.Model` with a dict of outputs.
        task_names: list of str, outputs to trace.

    Returns:
        A dict `{layer_name: frozenset(task_names)}` over `model.layers`.
    """
    depends = {
        name: _ancestor_operations(tensor)
        for name, tensor in _output_tensors(model, task_names).items()
    }
    return {
        layer.name: frozenset(
            name for name in task_names if id(layer) in depends[name]
        )
        for layer in model.layers
    }


def variable_tasks(model, task_names):
    """Maps `id(variable)` to the tasks depending on it (trainable only)."""
    by_layer = layer_tasks(model, task_names)
    owners = {}
    for layer in model.layers:
        for variable in layer.trainable_variables:
            owners.setdefault(id(variable), set()).update(by_layer[layer.name])
    return {key: frozenset(value) for key, value in owners.items()}


def last_shared_layer(model, task_names):
    """The deepest layer with trainable weights that all `task_names` use.

    Args:
        model: a functional `keras.Model` with a dict of outputs.
        task_names: list of str, the tasks that must share the layer.

    Returns:
        A `keras.layers.Layer` (e.g. the `MMoELayer` of an MMoE model, the
        shared `MLP` of a shared-bottom model, the `InputBlock` when only
        the embeddings are shared).

    Raises:
        ValueError: when no layer with weights is shared by all the tasks.
    """
    by_layer = layer_tasks(model, task_names)
    wanted = set(task_names)
    for layer in reversed(model.layers):
        if layer.trainable_variables and wanted <= by_layer[layer.name]:
            return layer
    raise ValueError(
        f"No layer with trainable weights is shared by the tasks "
        f"{sorted(wanted)}; GradNorm needs one (pass `shared_layer`)."
    )


def get_layer(model, name):
    """`model.get_layer(name)` with an error that lists the layer names."""
    try:
        return model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"`shared_layer` names no layer of the model. Received: "
            f"shared_layer={name!r}; layers: {[la.name for la in model.layers]}"
        ) from None
