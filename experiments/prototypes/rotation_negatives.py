"""Prototype (issue 13): do rotated images as negatives make per-task heads comparable?

A proxy for SpaceNet's per-task inference, outside the package: five independent dense copies
of the paper's CNN (conv 32-32, pool, 64-64, pool, dense 512), one per split CIFAR-10 task, each
with a 2-way head trained on its own task only (SGD 0.1, batch 128). Class-incremental
prediction: the head with the largest own logit (or logsumexp) takes the image, then the argmax
within it; "just after task t" lets heads 1..t compete on task t's images.

``--negatives-weight L`` (> 0) adds, at every step, a copy of the batch rotated by 90, 180 or
270 degrees (one draw per step) and the squared hinge ``L * mean(max(0, 1 + lse(rotated) -
lse(upright))^2)`` on the head's logsumexp ``lse``: a task's own upright images must score a
margin above rotated ones (an energy margin as in outlier exposure, Liu et al. 2020, with
shifted copies of the task's own images as the outliers, as in CSI, Tack et al. 2020). No other
task's data is used. Scored on a validation split (the last 500 training images of each
class), never on the test set.

    python -m experiments.prototypes.rotation_negatives --data-dir ../shared/datasets
    python -m experiments.prototypes.rotation_negatives --data-dir ../shared/datasets \
        --negatives-weight 1
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spacenet_jax.core.layers import add_bias, conv2d, max_pool_2x2
from spacenet_jax.storage.data import load_dataset

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
SHAPES = [(3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64), (3, 3, 64, 64), (2304, 512), (512, 2)]
PADDING = ["SAME", "VALID", "SAME", "VALID"]


def preprocess(pixels: np.ndarray) -> np.ndarray:
    return (pixels.reshape(-1, 32, 32, 3).astype(np.float32) / 255 - MEAN) / STD


def init(key: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
    params = []
    for shape in SHAPES:
        key, k = jax.random.split(key)
        receptive = int(np.prod(shape[:2])) if len(shape) == 4 else 1
        limit = np.sqrt(6 / (np.prod(shape[:-1]) + shape[-1] * receptive))  # Glorot uniform
        params.append((jax.random.uniform(k, shape, minval=-limit, maxval=limit),
                       jnp.zeros(shape[-1])))
    return params


def forward(params, x: jax.Array) -> jax.Array:
    h = x
    for layer, (w, b) in enumerate(params):
        if layer < 4:
            h = jax.nn.relu(add_bias(conv2d(h, w, PADDING[layer]), b))
            h = max_pool_2x2(h) if layer in (1, 3) else h
        else:
            h = h.reshape(h.shape[0], -1) @ w + b
            h = jax.nn.relu(h) if layer < 5 else h
    return h


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negatives-weight", type=float, default=0.0)
    args = p.parse_args(argv)

    data = load_dataset("cifar10", args.data_dir, verbose=False)
    held = np.zeros(len(data.train_labels), bool)
    for c in range(10):
        held[np.flatnonzero(data.train_labels == c)[-500:]] = True
    train_x, train_y = data.train_images[~held], data.train_labels[~held]
    val_x, val_y = data.train_images[held], data.train_labels[held]
    optimizer = optax.sgd(0.1)
    rotations = [lambda a, k=k: jnp.rot90(a, k, (1, 2)) for k in (1, 2, 3)]

    def loss(params, x, y, key):
        logits = forward(params, x)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        if args.negatives_weight > 0:
            quarter_turns = jax.random.randint(key, (), 1, 4)  # 1, 2 or 3
            rotated = forward(params, jax.lax.switch(quarter_turns - 1, rotations, x))
            gap = 1.0 + jax.nn.logsumexp(rotated, -1) - jax.nn.logsumexp(logits, -1)
            value = value + args.negatives_weight * jnp.mean(jax.nn.relu(gap) ** 2)
        return value

    @jax.jit
    def step(params, opt_state, x, y, key):
        grads = jax.grad(loss)(params, x, y, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng, key, heads, start = np.random.default_rng(args.seed), jax.random.PRNGKey(args.seed), [], \
        time.time()
    for task in range(5):
        examples = np.flatnonzero(train_y // 2 == task)
        key, k = jax.random.split(key)
        params = init(k)
        opt_state = optimizer.init(params)
        for _ in range(args.epochs):
            order = rng.permutation(examples)
            for s in range(len(order) // 128):
                batch = order[s * 128:(s + 1) * 128]
                key, k = jax.random.split(key)
                params, opt_state = step(params, opt_state, jnp.asarray(preprocess(train_x[batch])),
                                         jnp.asarray(train_y[batch] % 2, jnp.int32), k)
        heads.append(params)
        print(f"task {task + 1} trained ({time.time() - start:.0f} s)", flush=True)

    x = preprocess(val_x)
    predict = jax.jit(forward)
    logits = np.stack([np.concatenate([np.asarray(predict(h, jnp.asarray(x[i:i + 1000])))
                                       for i in range(0, len(x), 1000)]) for h in heads])
    task_of, within = val_y // 2, val_y % 2
    right_within = np.argmax(logits, -1) == within[None]  # (heads, N)
    task_il = np.mean(right_within[task_of, np.arange(len(val_y))])
    for name, score in (("max logit", logits.max(-1)),
                        ("logsumexp", np.asarray(jax.nn.logsumexp(jnp.asarray(logits), -1)))):
        after, final = [], []
        for task in range(5):
            mine = task_of == task
            after.append(np.mean((np.argmax(score[: task + 1][:, mine], 0) == task)
                                 & right_within[task, mine]))
            final.append(np.mean((np.argmax(score[:, mine], 0) == task) & right_within[task, mine]))
        print(f"negatives weight {args.negatives_weight}, {args.epochs} epochs, seed {args.seed}, "
              f"[{name}] validation: task-IL {task_il:.3f}, class-IL just after "
              f"{np.round(after, 3).tolist()}, after the last task {np.round(final, 3).tolist()}, "
              f"average {np.mean(final):.3f}")


if __name__ == "__main__":
    main()
