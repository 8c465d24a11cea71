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

``--rotation-classes 1|4`` trains label-augmented heads instead (Lee et al. 2020; CSI): 8
outputs per head, (class, quarter turn), each image turned by its own random turn (1) or all
four turns of every image in each batch (4); they are scored by the upright logit and by the
four turns aggregated. ``--mahalanobis`` adds each score combined with the package's
``--task-scores mahalanobis`` rule, fitted on each head's own upright training images.

    python -m experiments.prototypes.rotation_negatives --data-dir ../shared/datasets
    python -m experiments.prototypes.rotation_negatives --data-dir ../shared/datasets \
        --negatives-weight 1
    python -m experiments.prototypes.rotation_negatives --data-dir ../shared/datasets \
        --rotation-classes 1 --mahalanobis
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spacenet_jax.core.layers import add_bias, conv2d, max_pool_2x2
from spacenet_jax.storage.data import load_dataset

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
SHAPES = [(3, 3, 3, 32), (3, 3, 32, 32), (3, 3, 32, 64), (3, 3, 64, 64), (2304, 512)]
PADDING = ["SAME", "VALID", "SAME", "VALID"]


def preprocess(pixels: np.ndarray) -> np.ndarray:
    return (pixels.reshape(-1, 32, 32, 3).astype(np.float32) / 255 - MEAN) / STD


def init(key: jax.Array, outputs: int = 2) -> list[tuple[jax.Array, jax.Array]]:
    params = []
    for shape in [*SHAPES, (512, outputs)]:
        key, k = jax.random.split(key)
        receptive = int(np.prod(shape[:2])) if len(shape) == 4 else 1
        limit = np.sqrt(6 / (np.prod(shape[:-1]) + shape[-1] * receptive))  # Glorot uniform
        params.append((jax.random.uniform(k, shape, minval=-limit, maxval=limit),
                       jnp.zeros(shape[-1])))
    return params


def forward(params, x: jax.Array, features: bool = False):
    h = x
    for layer, (w, b) in enumerate(params):
        if layer == 5 and features:
            return h, h @ w + b
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
    p.add_argument("--mahalanobis", action="store_true",
                   help="also score each head as the package's --task-scores mahalanobis does "
                        "(statistics of its own training images, upright)")
    p.add_argument("--rotation-classes", type=int, choices=(0, 1, 4), default=0,
                   help="label augmentation: 8 outputs per head, (class, quarter turn); 1: one "
                        "random turn per image, 4: all four turns of each image in every batch")
    args = p.parse_args(argv)

    data = load_dataset("cifar10", args.data_dir, verbose=False)
    held = np.zeros(len(data.train_labels), bool)
    for c in range(10):
        held[np.flatnonzero(data.train_labels == c)[-500:]] = True
    train_x, train_y = data.train_images[~held], data.train_labels[~held]
    val_x, val_y = data.train_images[held], data.train_labels[held]
    optimizer = optax.sgd(0.1)
    rotations = [lambda a, k=k: jnp.rot90(a, k, (1, 2)) for k in (1, 2, 3)]

    def rotate_each(x, turns):  # (B, H, W, C), (B,) -> each image turned by its own quarter turns
        return jax.vmap(lambda a, k: jax.lax.switch(k, [lambda b, k=k: jnp.rot90(b, k)
                                                        for k in range(4)], a))(x, turns)

    def loss(params, x, y, key):
        if args.rotation_classes == 1:
            turns = jax.random.randint(key, y.shape, 0, 4)
            x, y = rotate_each(x, turns), y * 4 + turns
        elif args.rotation_classes == 4:
            x = jnp.concatenate([jnp.rot90(x, k, (1, 2)) for k in range(4)])
            y = jnp.concatenate([y * 4 + k for k in range(4)])
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
        params = init(k, 8 if args.rotation_classes else 2)
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
    with_features = jax.jit(partial(forward, features=True))

    def outputs(h, turns, images=None):
        images = x if images is None else images
        return np.concatenate([np.asarray(predict(h, jnp.rot90(jnp.asarray(images[i:i + 1000]),
                                                                turns, (1, 2))))
                               for i in range(0, len(images), 1000)])

    def features_of(h, images):
        parts = [with_features(h, jnp.asarray(images[i:i + 1000]))
                 for i in range(0, len(images), 1000)]
        return np.concatenate([np.asarray(f) for f, _ in parts])

    def class_scores(raw):  # (T, 4 or 1, N, 8 or 2) -> dict of name -> (T, N, 2) per-class scores
        if raw.shape[-1] == 2:
            return {"max logit": raw[:, 0]}
        raw = raw.reshape(*raw.shape[:3], 2, 4)
        matched = np.stack([raw[:, r, :, :, r] for r in range(4)], 1)  # (T, 4, N, 2)
        top = raw.max((-2, -1), keepdims=True)
        log_softmax = raw - top - np.log(np.exp(raw - top).sum((-2, -1), keepdims=True))
        matched_ls = np.stack([log_softmax[:, r, :, :, r] for r in range(4)], 1)
        return {"upright logit": raw[:, 0, :, :, 0], "aggregated logit": matched.mean(1),
                "aggregated log-softmax": matched_ls.mean(1),
                "aggregated softmax": np.exp(matched_ls).mean(1)}

    turns = range(4) if args.rotation_classes else range(1)
    if args.mahalanobis:  # the package's rule, on each head's own (upright) training images
        own_train = [preprocess(train_x[train_y // 2 == t]) for t in range(5)]
        train_scores = [class_scores(np.stack([outputs(h, r, own_train[t]) for r in turns])[None])
                        for t, h in enumerate(heads)]
        distance_norm, val_d2 = [], []
        for t, h in enumerate(heads):
            f, yy = features_of(h, own_train[t]), train_y[train_y // 2 == t] % 2
            means = np.stack([f[yy == c].mean(0) for c in range(2)])
            cov = np.cov((f - means[yy]).T, bias=True)
            cov = (1 - 1e-3) * cov + 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
            precision = np.linalg.inv(cov)

            def d2(feat, means=means, precision=precision):
                centred = feat[:, None, :] - means[None]
                return np.sum((centred @ precision) * centred, -1)

            nearest = d2(f).min(-1)
            distance_norm.append((nearest.mean(), nearest.std()))
            val_d2.append(d2(features_of(h, x)))

    task_of, within = val_y // 2, val_y % 2
    per_class = class_scores(np.stack([np.stack([outputs(h, r) for r in turns]) for h in heads]))
    scores = {name: (s, s.max(-1)) for name, s in per_class.items()}
    if args.mahalanobis:
        for name, s in per_class.items():
            standard = []
            for t in range(5):
                largest = train_scores[t][name][0].max(-1)
                term = (s[t] - largest.mean()) / largest.std()
                standard.append(term - (val_d2[t] - distance_norm[t][0]) / distance_norm[t][1])
            standard = np.stack(standard)
            scores[name + " + mahalanobis"] = (standard, standard.max(-1))
    for name, (logits, score) in scores.items():
        right_within = np.argmax(logits, -1) == within[None]  # (heads, N)
        task_il = np.mean(right_within[task_of, np.arange(len(val_y))])
        after, final = [], []
        for task in range(5):
            mine = task_of == task
            after.append(np.mean((np.argmax(score[: task + 1][:, mine], 0) == task)
                                 & right_within[task, mine]))
            final.append(np.mean((np.argmax(score[:, mine], 0) == task) & right_within[task, mine]))
        print(f"rotation classes {args.rotation_classes}, "
              f"negatives weight {args.negatives_weight}, {args.epochs} epochs, seed {args.seed}, "
              f"[{name}] validation: task-IL {task_il:.3f}, class-IL just after "
              f"{np.round(after, 3).tolist()}, after the last task {np.round(final, 3).tolist()}, "
              f"average {np.mean(final):.3f}")


if __name__ == "__main__":
    main()
