"""Scores that make the tasks' sub-networks comparable without task identity (per-task inference).

Under ``inference="per_task"`` task t's classes are scored by the sub-network it was learned in,
whose logits never change after t ends. Those sub-networks never saw each other's classes, so
their raw logits are on different scales, and the class-incremental argmax is biased towards
whichever task's logits run largest (the diagnosis in the README). ``config.task_scores``
chooses how each task's classes are scored instead, from statistics of the task's *own*
training data gathered when it ends (no other task's data, nothing stored but the statistics):

* ``"logits"`` (default): the raw logits.
* ``"standardised"``: ``(logit - mu_t) / sd_t``, with ``mu_t``, ``sd_t`` the mean and standard
  deviation over task t's training images of its largest own-class logit. Within a task the
  order is unchanged; across tasks a score says how typical the image is for that task.
* ``"mahalanobis"``: the standardised logit plus a standardised closeness of the last hidden
  layer's features ``h`` (``(D,)``, ``D = layer_sizes[-2]``) to the class:
  ``-(d2_c(h) - m_t) / s_t`` with ``d2_c`` the squared Mahalanobis distance to class c's mean
  under task t's pooled within-class covariance (shrunk by ``SHRINKAGE`` towards a multiple of
  the identity), and ``m_t``, ``s_t`` the mean and sd of the nearest class's ``d2`` over task
  t's training images (the feature-space outlier score of Lee et al., 2018, made comparable
  across tasks by the same standardisation).
* ``"mahalanobis_all"``: the same on the features of *every* hidden layer, concatenated
  (:func:`score_features`): each conv layer's ReLU maps averaged over space (one number per
  map, before pooling) and every dense hidden unit; ``D = sum(layer_sizes[1:-1])``. Lee et
  al. (2018) combine the distances of several layers; one pooled covariance over their
  concatenation is the simplest such combination.
* ``"mahalanobis_relative"``: ``"mahalanobis_all"`` with the relative distance of Ren et al.
  (2021), ``d2_c(h) - d2_0(h)``, where ``d2_0`` is the squared Mahalanobis distance to a
  single Gaussian fitted to all of task t's training features (its mean and shrunk
  covariance, no labels). What every image of the task's domain shares is subtracted, so the
  score reads how much more the image looks like class c than like any image the task saw;
  Ren et al. found it better than the plain distance at telling near-by classes apart, which
  is what deciding between two tasks' heads is.

With ``config.logit_weight`` w > 0 every rule but ``"logits"`` adds ``w * logit`` to each
class's score: the rules take each task's scale out entirely, and a little of the raw logit,
how confident the sub-network itself is, helps (w chosen on validation; README).

The statistics live in ``SpaceNetState.task_statistics`` (see :func:`empty_statistics`);
their memory is counted by :func:`statistics_size`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from spacenet_jax.core.config import SpaceNetConfig

#: Shrinkage of the pooled covariance towards ``trace / D * I`` (keeps it invertible when some
#: hidden units never fire on a task's images).
SHRINKAGE = 1e-3
#: Images per compiled chunk when statistics are gathered.
CHUNK = 500


#: The rules that read Mahalanobis distances of hidden features.
DISTANCE_RULES = ("mahalanobis", "mahalanobis_all", "mahalanobis_relative")
#: The rules that read every hidden layer's features (:func:`score_features`).
ALL_LAYER_RULES = ("mahalanobis_all", "mahalanobis_relative")


def feature_width(config: SpaceNetConfig) -> int:
    """``D``: the width of the features the Mahalanobis score reads: the last hidden layer's
    units, or for ``ALL_LAYER_RULES`` the units (conv: maps) of every hidden layer."""
    if config.task_scores in ALL_LAYER_RULES:
        return sum(config.layer_sizes[1:-1])
    return config.layer_sizes[-2]


def score_features(config: SpaceNetConfig, hidden: list[Array], features: Array) -> Array:
    """The features ``(B, feature_width(config))`` the score reads, from ``layer_outputs``'
    ``hidden`` (per hidden layer, ReLU activations: conv ``(B, H, W, maps)``, dense
    ``(B, units)``) and ``features`` (the output layer's input ``(B, fan_in_L)``).

    ``ALL_LAYER_RULES``: every hidden layer, conv maps averaged over space, concatenated in
    layer order; otherwise ``features`` itself.
    """
    if config.task_scores not in ALL_LAYER_RULES:
        return features
    return jnp.concatenate([h.mean(axis=(1, 2)) if h.ndim == 4 else h for h in hidden], -1)


def empty_statistics(config: SpaceNetConfig) -> tuple[Array, ...]:
    """Zeroed ``SpaceNetState.task_statistics`` for ``config.task_scores``.

    * ``"logits"``: ``()``.
    * ``"standardised"``: ``(logit_norm,)``, float32 ``(T, 2)``: per task, the mean and sd of
      its largest own-class logit on its training images (zeros until the task ends).
    * ``"mahalanobis"`` and ``"mahalanobis_all"``: ``(logit_norm, class_means, precisions,
      distance_norm)``:
      ``class_means`` ``(C, D)`` (row c: class c's mean features), ``precisions``
      ``(T, D, D)`` (each task's inverse shrunk pooled covariance) and ``distance_norm``
      ``(T, 2)`` (mean and sd of the nearest class's squared distance).
    * ``"mahalanobis_relative"``: those, then ``task_means`` ``(T, D)`` and
      ``task_precisions`` ``(T, D, D)``: each task's one Gaussian over all its training
      features (the distance norm is then that of the relative distance).
    """
    T = config.num_tasks
    if config.task_scores == "logits":
        return ()
    logit_norm = jnp.zeros((T, 2), jnp.float32)
    if config.task_scores == "standardised":
        return (logit_norm,)
    D, C = feature_width(config), config.num_classes
    distance = (logit_norm, jnp.zeros((C, D), jnp.float32), jnp.zeros((T, D, D), jnp.float32),
                jnp.zeros((T, 2), jnp.float32))
    if config.task_scores == "mahalanobis_relative":
        return (*distance, jnp.zeros((T, D), jnp.float32), jnp.zeros((T, D, D), jnp.float32))
    return distance


def statistics_size(config: SpaceNetConfig) -> int:
    """Float32 numbers the statistics of ``config.task_scores`` hold (0 for raw logits)."""
    return int(sum(np.prod(a.shape) for a in jax.eval_shape(lambda: empty_statistics(config))))


def class_scores(
    config: SpaceNetConfig, statistics: tuple[Array, ...], task: int, ended: Array,
    features: Array, logits: Array,
) -> Array:
    """Scores ``(B, C)`` of task ``task``'s sub-network output (only its classes' columns are
    used by the caller): raw ``logits`` while the task has not ended (no statistics yet), then
    the rule's score plus ``config.logit_weight`` times the logits.

    Args:
      features: ``(B, D)`` the features of :func:`score_features`; logits: ``(B, C)``.
      ended: bool scalar, whether ``task`` has ended (its statistics are fitted).
    """
    if config.task_scores == "logits":
        return logits
    mean, sd = statistics[0][task, 0], statistics[0][task, 1]
    scores = (logits - mean) / jnp.where(ended, sd, 1.0)
    if config.task_scores in DISTANCE_RULES:
        _, class_means, precisions, distance_norm = statistics[:4]
        task_gaussian = None
        if config.task_scores == "mahalanobis_relative":
            task_gaussian = (statistics[4][task], statistics[5][task])
        d2 = class_distances(features, class_means, precisions[task], task_gaussian)  # (B, C)
        mean_d2, sd_d2 = distance_norm[task, 0], distance_norm[task, 1]
        scores = scores - (d2 - mean_d2) / jnp.where(ended, sd_d2, 1.0)
    if config.logit_weight:
        scores = scores + config.logit_weight * logits
    return jnp.where(ended, scores, logits)


def class_distances(features: Array, class_means: Array, precision: Array,
                    task_gaussian: tuple[Array, Array] | None = None) -> Array:
    """``(B, C)``: the squared distance of features ``(B, D)`` to each class mean under the
    task's pooled ``precision``; with ``task_gaussian`` (the task's one mean ``(D,)`` and
    precision ``(D, D)``, ``"mahalanobis_relative"``) minus the distance to that Gaussian."""
    d2 = squared_distances(features, class_means, precision)
    if task_gaussian is None:
        return d2
    task_mean, task_precision = task_gaussian
    return d2 - squared_distances(features, task_mean[None], task_precision)


def squared_distances(features: Array, means: Array, precision: Array) -> Array:
    """``(B, C)``: ``(h - mu_c)^T P (h - mu_c)`` for features ``(B, D)``, means ``(C, D)`` and
    a precision ``(D, D)``, expanded so that no ``(B, C, D)`` array is formed."""
    hp = features @ precision
    mp = means @ precision
    return (
        jnp.sum(hp * features, -1, keepdims=True)
        - 2.0 * hp @ means.T
        + jnp.sum(mp * means, -1)[None, :]
    )


def _chunks(indices: np.ndarray, num_examples: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The task's example indices in fixed-size chunks, each with a 0/1 weight (padding 0)."""
    ix = np.asarray(indices)[..., :num_examples]
    n = ix.shape[-1]
    size = -(-n // CHUNK) * CHUNK
    pad = [(0, 0)] * (ix.ndim - 1) + [(0, size - n)]
    ix = np.pad(ix, pad)
    weight = np.pad(np.ones(n, np.float32), (0, size - n))
    return [(ix[..., s : s + CHUNK], weight[s : s + CHUNK]) for s in range(0, size, CHUNK)]


@partial(jax.jit, static_argnames="config")
def _first_moments(state, images, labels, ix, weight, *, config, task):
    from spacenet_jax.core.network import task_subnetwork_outputs

    features, logits = task_subnetwork_outputs(state, config, images[ix], task)
    own = jnp.asarray(config.class_masks())[task]
    largest = jnp.max(jnp.where(own, logits, -jnp.inf), -1)  # (B,)
    onehot = jax.nn.one_hot(labels[ix], config.num_classes) * weight[:, None]  # (B, C)
    return (
        jnp.sum(weight), jnp.sum(weight * largest), jnp.sum(weight * largest**2),
        onehot.sum(0), onehot.T @ features,
    )


@partial(jax.jit, static_argnames="config")
def _scatter(state, images, labels, ix, weight, class_means, *, config, task):
    from spacenet_jax.core.network import task_subnetwork_outputs

    features, _ = task_subnetwork_outputs(state, config, images[ix], task)
    centred = (features - class_means[labels[ix]]) * weight[:, None]
    return centred.T @ centred


@partial(jax.jit, static_argnames="config")
def _distance_moments(state, images, labels, ix, weight, class_means, precision, task_gaussian,
                      *, config, task):
    from spacenet_jax.core.network import task_subnetwork_outputs

    features, _ = task_subnetwork_outputs(state, config, images[ix], task)
    own = jnp.asarray(config.class_masks())[task]
    d2 = class_distances(features, class_means, precision, task_gaussian)
    nearest = jnp.min(jnp.where(own, d2, jnp.inf), -1)
    return jnp.sum(weight * nearest), jnp.sum(weight * nearest**2)


def _mean_sd(total: Array, total_sq: Array, count: Array) -> Array:
    mean = total / count
    return jnp.stack([mean, jnp.sqrt(jnp.maximum(total_sq / count - mean**2, 1e-12))])


def _precision(scatter: Array, count: Array) -> Array:
    """Inverse of the pooled within-class covariance, shrunk towards ``trace / D * I``."""
    D = scatter.shape[0]
    cov = scatter / count
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * jnp.trace(cov) / D * jnp.eye(D)
    return jnp.linalg.inv(cov)


def fit_task_statistics(
    state, config: SpaceNetConfig, images: Array, labels: Array, indices: np.ndarray,
    num_examples: int, task: int, *, batched: bool = False,
):
    """The state with task ``task``'s statistics gathered from its own training examples
    ``images[indices[:num_examples]]``, in the sub-network it ended with.

    Call it after ``end_task`` (the task's biases are kept, so its sub-network is final).
    ``batched``: ``state`` has a leading seed axis and ``indices`` is ``(S, length)``
    (``running.multiseed``). The examples are gathered in fixed chunks in sorted order, so
    the result does not depend on the order of ``indices``.
    """
    if config.task_scores == "logits":
        return state
    indices = np.sort(np.asarray(indices)[..., :num_examples], axis=-1)
    chunks = _chunks(indices, num_examples)

    def over_seeds(fn, *per_seed):
        """``fn(state, images, labels, ix, w, *per_seed)``, vmapped over seeds if batched."""
        fn = partial(fn, config=config, task=jnp.asarray(task, jnp.int32))
        if batched:
            fn = jax.vmap(fn, in_axes=(0, None, None, 0, None) + (0,) * len(per_seed))
        return lambda ix, w: fn(state, images, labels, ix, w, *per_seed)

    first = over_seeds(_first_moments)
    sums = None
    for ix, w in chunks:
        part = first(ix, w)
        sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    count, total, total_sq, class_count, class_sum = sums
    ours = (slice(None), task) if batched else task
    statistics = [jnp.asarray(a) for a in state.task_statistics]
    norm = jnp.moveaxis(_mean_sd(total, total_sq, count), 0, -1)
    statistics[0] = statistics[0].at[ours].set(norm)
    if config.task_scores in DISTANCE_RULES:
        own = jnp.asarray(config.class_masks()[task])[:, None]
        means = class_sum / jnp.maximum(class_count, 1.0)[..., None]
        class_means = jnp.where(own, means, statistics[1])
        scatter_of = over_seeds(_scatter, class_means)
        scatter = sum(scatter_of(ix, w) for ix, w in chunks)
        invert = jax.vmap(_precision) if batched else _precision
        precision = invert(scatter, count)
        task_gaussian = None
        if config.task_scores == "mahalanobis_relative":
            # One Gaussian over all the task's features: the class scatter with every class's
            # mean set to the task's mean.
            task_mean = class_sum.sum(-2) / count[..., None]  # (D,) or (S, D)
            scatter_of = over_seeds(_scatter, jnp.broadcast_to(task_mean[..., None, :],
                                                               class_means.shape))
            task_gaussian = (task_mean,
                             invert(sum(scatter_of(ix, w) for ix, w in chunks), count))
            statistics[4] = statistics[4].at[ours].set(task_gaussian[0])
            statistics[5] = statistics[5].at[ours].set(task_gaussian[1])
        moments_of = over_seeds(_distance_moments, class_means, precision, task_gaussian)
        moments = [moments_of(ix, w) for ix, w in chunks]
        total_d2 = sum(m[0] for m in moments)
        total_d2_sq = sum(m[1] for m in moments)
        statistics[1] = class_means
        statistics[2] = statistics[2].at[ours].set(precision)
        statistics[3] = statistics[3].at[ours].set(
            jnp.moveaxis(_mean_sd(total_d2, total_d2_sq, count), 0, -1)
        )
    return state.replace(task_statistics=tuple(statistics))
