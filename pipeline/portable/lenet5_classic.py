"""LeNet-5 as published: LeCun, Bottou, Bengio & Haffner (1998).

"Gradient-based learning applied to document recognition", Proc. IEEE 86(11),
pp. 2278-2324, section II-B ("LeNet-5"), section II-C (loss function) and
Appendix A (squashing function and initialisation).

Architecture (input 32x32x1; parameter counts are the paper's)::

    layer   what                                              output     params
    c1      conv 6@5x5, valid, squashed                       28x28x6       156
    s2      trainable 2x2 subsampling (sum*coef+bias, squash)  14x14x6        12
    c3      conv 16@5x5 with the partial connections of        10x10x16    1,516
            Table I (only the 60 connected 5x5 kernels exist)
    s4      trainable 2x2 subsampling                          5x5x16         32
    c5      conv 120@5x5 (a full connection at 32x32 input)    1x1x120    48,120
    flatten (no parameters)                                    120             0
    f6      dense 84, squashed                                 84         10,164
    output  10 Euclidean RBF units with fixed +-1 prototypes   10            840
                                                                   total  60,840

* Squashing function (Appendix A): ``f(a) = A tanh(S a)``, A = 1.7159,
  S = 2/3, chosen so that f(1) ~= 1 and f(-1) ~= -1.  It follows c1, s2, c3,
  s4, c5 and f6 (the paper applies it to every unit up to F6).
* Initialisation (Appendix A): every weight is drawn uniformly in
  ``[-2.4/F_i, 2.4/F_i]`` with ``F_i`` the fan-in of the unit the connection
  belongs to (c1: 25*C, s2/s4: 4, c3: 75, 100 or 150 depending on the map,
  c5: 400, f6: 120).  Biases start at zero (the paper does not say).
* Output (section II-B, eq. 7): ``y_i = sum_j (x_j - w_ij)^2`` against fixed
  prototypes ``w_i`` in {-1, +1}^84.  The paper draws them as stylised 7x12
  bitmaps of the characters; here they are the hand-drawn 7x12 digit bitmaps
  in :data:`DIGIT_BITMAPS` (``'#'`` -> +1, ``'.'`` -> -1).  For
  ``num_classes != 10`` (e.g. GTSRB's 43 classes) a documented stand-in is
  used: rows of a 128x128 Sylvester-Hadamard matrix restricted to a fixed,
  seeded choice of 84 columns (pairwise Hamming distances ~42), see
  :func:`make_prototypes`.  The prototypes are *non-trainable* weights of the
  ``output`` layer, so Keras' ``count_params()`` reports the paper's 840.

Probabilities and the loss (design choice)
------------------------------------------
Downstream code treats every model the same way: ``model.predict(x)`` gives
class probabilities and ``argmax`` is the predicted class.  The ``output``
layer therefore computes the RBF penalties ``y`` and returns

    p_i = exp(-y_i) / (exp(-j) + sum_k exp(-y_k)),   i = 0..num_classes-1,

i.e. the softmax over ``(-y_0, ..., -y_{K-1}, -j)`` with the last column (a
"rubbish" class of constant penalty ``j``) dropped.  ``argmax p == argmin y``,
the paper's decision rule, so ``argmax`` and Keras' ``accuracy`` work as for
any classifier.  Rows sum to less than 1, the rubbish class taking the rest:
even a perfect match (``y_D = 0``, every other ``y_i`` large) gets
``p_D = 1 / (1 + exp(-j))``, about 0.52 for ``j = 0.1``.  Read this model's
"confidence" as a score for ranking, not a calibrated probability.

The paper's discriminative criterion (section II-C, eq. 9) is

    E(W) = 1/P sum_p [ y_{D_p}(Z^p, W) + log(exp(-j) + sum_i exp(-y_i(Z^p, W))) ]

and since ``-log p_{D_p} = y_{D_p} + log(exp(-j) + sum_i exp(-y_i))`` it is
exactly the mean negative log of the probability the model outputs for the
true class.  :class:`RBFLoss` computes that (sparse integer labels), so one
compiles with ``model.compile(loss=loss_for("rbf"), metrics=["accuracy"])``.
Eq. 8 (``E = mean y_{D_p}``, the MSE form) is the first term alone; the
second, competitive term pushes up the penalties of wrong classes that are
not already much larger than ``j`` (the paper's "j is positive and prevents
the penalties of classes that are already very large from being pushed
further up").  The paper gives no value for ``j``; we use
:data:`DEFAULT_RUBBISH_PENALTY` (``0.1``, a small positive constant), which
can be changed with ``rubbish_penalty=``.

Numerics: penalties are up to ``84 * (1.7159 + 1)^2 ~= 620``, so ``p_D`` can
be as small as ``exp(-625)``, far below float32's range (a float32
``-log p`` would be clipped and give no gradient -- already at
initialisation, where every ``y_i ~= 84``).  The ``output`` layer and
:class:`RBFLoss` therefore compute in float64 (the model output is float64),
where ``exp(-625)`` is a normal number and eq. 9 is evaluated exactly.  The
loss value handed back to Keras is cast to float32.

``output="softmax"`` replaces the RBF layer by ``Dense(num_classes,
softmax)`` (850 parameters for 10 classes; total 60,850) trained with sparse
categorical cross-entropy; see :func:`loss_for`.

Documented deviations from the paper
------------------------------------
* Optimiser: the paper trains with a stochastic diagonal Levenberg-Marquardt
  method (Appendix C) with a hand-set learning-rate schedule; we train with
  ordinary Keras optimisers (SGD/Adam).
* Prototypes: hand-drawn digit bitmaps (the paper's exact bitmaps are only
  shown as a figure), and seeded Hadamard codes when there are not 10
  classes.
* Input normalisation is the data pipeline's business (the paper maps
  background to -0.1 and foreground to 1.175 and pads 28x28 MNIST digits to
  32x32); this model accepts any ``H x W x C`` for which the layer arithmetic
  works (``H, W`` >= 32 and every 2x2 subsampling sees an even size); more
  channels only add weights to c1, and bigger inputs make c5's maps larger
  than 1x1 (they are flattened before f6, as the paper describes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "A",
    "S",
    "C3_CONNECTIONS",
    "DEFAULT_RUBBISH_PENALTY",
    "DIGIT_BITMAPS",
    "EuclideanRBF",
    "PartiallyConnectedConv2D",
    "RBFLoss",
    "TrainableSubsampling",
    "build_lenet5_classic",
    "digit_prototypes",
    "loss_for",
    "make_prototypes",
    "paper_uniform",
    "rbf_to_probabilities",
    "scaled_tanh",
]

PACKAGE = "lenet5_classic"

# Appendix A: f(a) = A tanh(S a).
A = 1.7159
S = 2.0 / 3.0

# Constant j of eq. 9 (the paper only says "a positive constant").
DEFAULT_RUBBISH_PENALTY = 0.1

# Seed of the stand-in prototype codes used when num_classes != 10.  Fixed so
# that the codes do not depend on the model's initialisation seed.
PROTOTYPE_SEED = 1998

OUTPUT_KINDS = ("rbf", "softmax")

# --------------------------------------------------------------------------
# Table I of LeCun et al. (1998), p. 8: "Each column indicates which feature
# map in S2 are combined by the units in a particular feature map of C3."
#
#        C3 map:  0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
#     S2 map 0    X       X X X     X  X  X  X     X  X
#            1    X X       X X X      X  X  X  X     X
#            2    X X X       X X X       X     X  X  X
#            3      X X X     X X X X        X     X  X
#            4        X X X     X X X  X     X  X     X
#            5          X X X     X X  X  X     X  X  X
#
# Written out below, one entry per C3 map: maps 0-5 see 3 contiguous S2 maps,
# 6-11 see 4 contiguous, 12-14 see 4 discontinuous, 15 sees all 6.  60
# connected (input, output) pairs, so 60*25 weights + 16 biases = 1,516
# parameters.  The paper breaks symmetry this way: different C3 maps are
# forced to extract different features because they get different inputs.
# --------------------------------------------------------------------------
C3_CONNECTIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),
    (1, 2, 3),
    (2, 3, 4),
    (3, 4, 5),
    (0, 4, 5),
    (0, 1, 5),
    (0, 1, 2, 3),
    (1, 2, 3, 4),
    (2, 3, 4, 5),
    (0, 3, 4, 5),
    (0, 1, 4, 5),
    (0, 1, 2, 5),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

# --------------------------------------------------------------------------
# Output prototypes.  The paper (section II-B, Fig. 3) uses stylised 7x12
# bitmaps of the characters as the fixed RBF parameter vectors.  These are
# hand-drawn 7-wide x 12-high digit bitmaps: '#' -> +1, '.' -> -1, read row by
# row (84 = 7*12 values, the size of F6).
# --------------------------------------------------------------------------
DIGIT_BITMAPS: tuple[str, ...] = (
    # 0
    """
    .......
    ..###..
    .#...#.
    #.....#
    #.....#
    #.....#
    #.....#
    #.....#
    #.....#
    .#...#.
    ..###..
    .......
    """,
    # 1
    """
    .......
    ...#...
    ..##...
    .#.#...
    ...#...
    ...#...
    ...#...
    ...#...
    ...#...
    ...#...
    .#####.
    .......
    """,
    # 2
    """
    .......
    ..###..
    .#...#.
    #.....#
    ......#
    .....#.
    ....#..
    ...#...
    ..#....
    .#.....
    #######
    .......
    """,
    # 3
    """
    .......
    .####..
    #....#.
    ......#
    .....#.
    ..###..
    .....#.
    ......#
    ......#
    #....#.
    .####..
    .......
    """,
    # 4
    """
    .......
    ....##.
    ...#.#.
    ..#..#.
    .#...#.
    #....#.
    #######
    .....#.
    .....#.
    .....#.
    .....#.
    .......
    """,
    # 5
    """
    .......
    #######
    #......
    #......
    #####..
    .....#.
    ......#
    ......#
    ......#
    #....#.
    .####..
    .......
    """,
    # 6
    """
    .......
    ..###..
    .#.....
    #......
    #......
    #.###..
    ##...#.
    #.....#
    #.....#
    .#...#.
    ..###..
    .......
    """,
    # 7
    """
    .......
    #######
    ......#
    .....#.
    ....#..
    ...#...
    ...#...
    ..#....
    ..#....
    ..#....
    ..#....
    .......
    """,
    # 8
    """
    .......
    ..###..
    .#...#.
    #.....#
    .#...#.
    ..###..
    .#...#.
    #.....#
    #.....#
    .#...#.
    ..###..
    .......
    """,
    # 9
    """
    .......
    ..###..
    .#...#.
    #.....#
    #.....#
    .#...##
    ..###.#
    ......#
    ......#
    .....#.
    ..###..
    .......
    """,
)

BITMAP_ROWS, BITMAP_COLS = 12, 7


def bitmap_to_array(bitmap: str) -> np.ndarray:
    """Parse one string-art bitmap into a (12, 7) array of +1 ('#') / -1 ('.')."""
    rows = [line.strip() for line in bitmap.strip().splitlines()]
    if len(rows) != BITMAP_ROWS or any(len(r) != BITMAP_COLS for r in rows):
        raise ValueError(f"bitmap must be {BITMAP_ROWS} rows x {BITMAP_COLS} columns")
    if any(ch not in "#." for r in rows for ch in r):
        raise ValueError("bitmap may only contain '#' and '.'")
    return np.array([[1.0 if ch == "#" else -1.0 for ch in r] for r in rows])


def digit_prototypes() -> np.ndarray:
    """The 10 digit prototypes, shape (10, 84), values in {-1, +1}."""
    return np.stack([bitmap_to_array(b).reshape(-1) for b in DIGIT_BITMAPS])


def _sylvester_hadamard(order: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < order:
        h = np.block([[h, h], [h, -h]])
    return h


def make_prototypes(
    num_classes: int,
    dim: int = 84,
    kind: str = "auto",
    seed: int = PROTOTYPE_SEED,
) -> np.ndarray:
    """Fixed +-1 prototype vectors for the RBF output, shape (num_classes, dim).

    ``kind="digits"`` (the default for 10 classes, ``"auto"``) returns the
    hand-drawn 7x12 digit bitmaps (``dim`` must be 84).  ``kind="codes"`` (the
    default otherwise) is the stand-in for the paper's character bitmaps:
    rows of a Sylvester-Hadamard matrix of order ``2**ceil(log2(dim+1))``
    (the all-ones row excluded), restricted to a seeded random choice of
    ``dim`` columns, taken in a seeded random order.  Two full Hadamard rows
    differ in exactly half their positions, so the codes are far apart
    (about ``dim/2`` = 42 for 84); beyond the available rows, seeded random
    +-1 rows are appended.  Deterministic for a given ``seed``.
    """
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if kind == "auto":
        kind = "digits" if num_classes == 10 and dim == 84 else "codes"
    if kind == "digits":
        if num_classes != 10 or dim != BITMAP_ROWS * BITMAP_COLS:
            raise ValueError("digit prototypes need num_classes=10 and dim=84")
        return digit_prototypes()
    if kind != "codes":
        raise ValueError(f"unknown prototype kind {kind!r}")
    rng = np.random.default_rng(seed)
    order = 1 << math.ceil(math.log2(dim + 1))
    hadamard = _sylvester_hadamard(order)
    cols = np.sort(rng.choice(order, size=dim, replace=False))
    rows = 1 + rng.permutation(order - 1)
    codes = hadamard[rows][:, cols]
    if num_classes > len(codes):
        extra = rng.choice([-1.0, 1.0], size=(num_classes - len(codes), dim))
        codes = np.concatenate([codes, extra])
    return np.ascontiguousarray(codes[:num_classes], dtype=np.float64)


# --------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
def scaled_tanh(x):
    """The paper's squashing function f(a) = 1.7159 tanh(2a/3) (Appendix A)."""
    return A * ops.tanh(S * x)


def paper_uniform(fan_in: int, seed: int | None = None) -> keras.initializers.Initializer:
    """Appendix A initialisation: uniform in [-2.4/F_i, 2.4/F_i], F_i = fan-in."""
    bound = 2.4 / fan_in
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TrainableSubsampling(keras.layers.Layer):
    """S2/S4: per map, (sum of a non-overlapping p x p block) * coef + bias, squashed.

    Two trainable parameters per feature map (coefficient and bias), as in
    section II-B.  The coefficient is initialised uniformly in
    ``+-2.4/(p*p)`` (fan-in ``p*p`` = 4), the bias at zero.
    """

    def __init__(self, pool_size: int = 2, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.seed = seed

    def build(self, input_shape):
        channels = input_shape[-1]
        self.coefficient = self.add_weight(
            name="coefficient",
            shape=(channels,),
            initializer=paper_uniform(self.pool_size**2, self.seed),
        )
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")

    def call(self, inputs):
        p = self.pool_size
        sums = ops.average_pool(inputs, p, strides=p, padding="valid") * float(p * p)
        return scaled_tanh(sums * self.coefficient + self.bias)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        p = self.pool_size
        return (b, None if h is None else h // p, None if w is None else w // p, c)

    def get_config(self):
        config = super().get_config()
        config.update(pool_size=self.pool_size, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PartiallyConnectedConv2D(keras.layers.Layer):
    """C3: a valid, stride-1 convolution where output map ``m`` only sees the
    input maps ``connections[m]`` (Table I), followed by the squashing function.

    Only the connected kernels exist as weights: ``kernel`` is a flat vector
    of ``k*k*sum(len(c) for c in connections)`` values (1,500 for Table I)
    and ``bias`` has one value per output map (16).  In ``call`` the flat
    vector is scattered (a gather with a constant index) into the full
    ``(k, k, in_maps, out_maps)`` kernel whose unconnected positions are the
    constant 0, so they have no weight, no gradient and no effect.

    Flat layout: for each output map ``m``, for each input ``i`` in
    ``connections[m]`` (in order), the ``k x k`` kernel in row-major order.
    Each weight is initialised uniformly in ``+-2.4/F`` with ``F = k*k*
    len(connections[m])`` the fan-in of the units of map ``m``.
    """

    def __init__(
        self,
        connections: Sequence[Sequence[int]] = C3_CONNECTIONS,
        kernel_size: int = 5,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.connections = tuple(tuple(int(i) for i in c) for c in connections)
        if not self.connections or any(len(c) == 0 for c in self.connections):
            raise ValueError("every output map needs at least one input map")
        if any(len(set(c)) != len(c) for c in self.connections):
            raise ValueError("duplicate input map in a connection list")
        self.kernel_size = int(kernel_size)
        self.seed = seed
        self.filters = len(self.connections)

    @property
    def num_kernel_weights(self) -> int:
        return self.kernel_size**2 * sum(len(c) for c in self.connections)

    def connection_mask(self, in_maps: int | None = None) -> np.ndarray:
        """Boolean (in_maps, out_maps) matrix: True where output map sees input map."""
        in_maps = in_maps or (max(max(c) for c in self.connections) + 1)
        mask = np.zeros((in_maps, self.filters), dtype=bool)
        for m, inputs in enumerate(self.connections):
            mask[list(inputs), m] = True
        return mask

    def build(self, input_shape):
        in_maps = input_shape[-1]
        if max(max(c) for c in self.connections) >= in_maps or min(min(c) for c in self.connections) < 0:
            raise ValueError(f"connections refer to input maps outside 0..{in_maps - 1}")
        k = self.kernel_size
        n = self.num_kernel_weights
        # Gather index: full-kernel position -> index into [kernel..., 0.0].
        index = np.full((k, k, in_maps, self.filters), n, dtype=np.int32)
        bounds = np.empty(n, dtype=np.float64)
        pos = 0
        for m, inputs in enumerate(self.connections):
            fan_in = k * k * len(inputs)
            for i in inputs:
                index[:, :, i, m] = np.arange(pos, pos + k * k).reshape(k, k)
                bounds[pos : pos + k * k] = 2.4 / fan_in
                pos += k * k
        self._gather_index = index.reshape(-1)
        self._full_shape = (k, k, in_maps, self.filters)

        seed = self.seed

        def init(shape, dtype=None):
            u = keras.random.uniform(shape, minval=-1.0, maxval=1.0, dtype="float32", seed=seed)
            return ops.cast(u * ops.convert_to_tensor(bounds, "float32"), dtype or "float32")

        self.kernel = self.add_weight(name="kernel", shape=(n,), initializer=init)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def full_kernel(self):
        """The (k, k, in_maps, out_maps) kernel with zeros at unconnected pairs."""
        padded = ops.concatenate([self.kernel, ops.zeros((1,), dtype=self.kernel.dtype)])
        flat = ops.take(padded, ops.convert_to_tensor(self._gather_index, "int32"))
        return ops.reshape(flat, self._full_shape)

    def call(self, inputs):
        kernel = ops.cast(self.full_kernel(), inputs.dtype)
        out = ops.conv(inputs, kernel, strides=1, padding="valid")
        return scaled_tanh(out + ops.cast(self.bias, inputs.dtype))

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        k = self.kernel_size
        return (
            b,
            None if h is None else h - k + 1,
            None if w is None else w - k + 1,
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            connections=[list(c) for c in self.connections],
            kernel_size=self.kernel_size,
            seed=self.seed,
        )
        return config


def rbf_to_probabilities(distances, rubbish_penalty: float = DEFAULT_RUBBISH_PENALTY):
    """Class probabilities from RBF penalties ``y`` (shape ``(..., K)``).

    ``p_i = exp(-y_i) / (exp(-j) + sum_k exp(-y_k))``: softmax over ``-y``
    plus one extra "rubbish" logit ``-j``, whose column is dropped, so rows
    sum to less than 1 and ``argmax p == argmin y``.  ``-log p_D`` is exactly
    the per-sample term of eq. 9.  Pass ``rubbish_penalty=None`` for a plain
    softmax(-y) (the ``j -> infinity`` limit).  Computed in the dtype of
    ``distances`` (use float64, see the module docstring).
    """
    distances = ops.convert_to_tensor(distances)
    if rubbish_penalty is None:
        return ops.softmax(-distances, axis=-1)
    rubbish = ops.full(ops.shape(distances)[:-1] + (1,), -float(rubbish_penalty), dtype=distances.dtype)
    logits = ops.concatenate([-distances, rubbish], axis=-1)
    return ops.softmax(logits, axis=-1)[..., :-1]


@keras.saving.register_keras_serializable(package=PACKAGE)
class EuclideanRBF(keras.layers.Layer):
    """Euclidean RBF output units with fixed prototypes (section II-B, eq. 7).

    ``distances(x)`` gives the penalties ``y_i = sum_j (x_j - w_ij)^2``;
    ``call(x)`` returns ``rbf_to_probabilities(y, rubbish_penalty)`` (see the
    module docstring for why and for the equivalence with eq. 9).  The
    prototypes are a non-trainable weight of shape ``(num_classes, dim)`` so
    that ``count_params()`` includes them (840 for 10 classes), as the paper
    counts them.  Computes in float64 by default.
    """

    def __init__(
        self,
        num_classes: int,
        rubbish_penalty: float = DEFAULT_RUBBISH_PENALTY,
        prototypes: str = "auto",
        prototype_seed: int = PROTOTYPE_SEED,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float64")
        super().__init__(**kwargs)
        if rubbish_penalty is not None and not rubbish_penalty > 0:
            raise ValueError("rubbish_penalty (j of eq. 9) must be positive")
        self.num_classes = int(num_classes)
        self.rubbish_penalty = None if rubbish_penalty is None else float(rubbish_penalty)
        self.prototype_kind = prototypes
        self.prototype_seed = int(prototype_seed)

    def build(self, input_shape):
        dim = input_shape[-1]
        values = make_prototypes(self.num_classes, dim, self.prototype_kind, self.prototype_seed)

        def init(shape, dtype=None):
            return ops.convert_to_tensor(values, dtype=dtype or "float64")

        self.prototypes = self.add_weight(
            name="prototypes",
            shape=(self.num_classes, dim),
            initializer=init,
            trainable=False,
        )

    def distances(self, inputs):
        """RBF penalties ``y_i = sum_j (x_j - w_ij)^2``, shape (..., num_classes)."""
        x = ops.cast(ops.convert_to_tensor(inputs), self.compute_dtype)
        w = ops.cast(self.prototypes, self.compute_dtype)
        diff = ops.expand_dims(x, -2) - w  # (..., K, dim)
        return ops.sum(ops.square(diff), axis=-1)

    def call(self, inputs):
        return rbf_to_probabilities(self.distances(inputs), self.rubbish_penalty)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            rubbish_penalty=self.rubbish_penalty,
            prototypes=self.prototype_kind,
            prototype_seed=self.prototype_seed,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RBFLoss(keras.losses.Loss):
    """The paper's eq. 9 for a model whose output is :class:`EuclideanRBF`.

    ``y_pred`` are the output layer's probabilities
    ``p_i = exp(-y_i) / (exp(-j) + sum_k exp(-y_k))`` and ``y_true`` sparse
    integer labels; the per-sample loss is

        -log p_D = y_D + log(exp(-j) + sum_i exp(-y_i))

    which is eq. 9's summand (averaged over the batch by the default
    reduction).  Evaluated in float64 (no renormalisation, clipping only at
    1e-300, which the bounded penalties never reach); the reduced value is
    returned in Keras' floatx.  Do not use Keras' sparse categorical
    cross-entropy on the RBF model: it renormalises away the ``j`` term and
    clips at 1e-7, which kills the gradient at initialisation.
    """

    def __init__(self, name: str = "rbf_loss", reduction="sum_over_batch_size", **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, reduction=reduction, dtype="float64")

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.convert_to_tensor(y_true), "int32")
        if len(labels.shape) == len(y_pred.shape):
            labels = ops.squeeze(labels, axis=-1)
        p_true = ops.take_along_axis(y_pred, ops.expand_dims(labels, -1), axis=-1)
        p_true = ops.squeeze(p_true, axis=-1)
        return -ops.log(ops.maximum(p_true, 1e-300))

    def __call__(self, y_true, y_pred, sample_weight=None):
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        return ops.cast(loss, keras.backend.floatx())


def loss_for(output: str = "rbf") -> keras.losses.Loss:
    """The loss to compile a model built with ``output=...`` with.

    ``"rbf"`` -> :class:`RBFLoss` (eq. 9); ``"softmax"`` ->
    ``keras.losses.SparseCategoricalCrossentropy()``.  Both take sparse
    integer labels and the model's probability output, so
    ``model.compile(optimizer, loss=loss_for(kind), metrics=["accuracy"])``.
    """
    if output == "rbf":
        return RBFLoss()
    if output == "softmax":
        return keras.losses.SparseCategoricalCrossentropy()
    raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")


def _sub_seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else int(seed) * 1009 + offset


def _c5_size(size: int, axis: str) -> int:
    """C5's size along one axis: valid 5x5 convolutions and 2x2 subsampling without remainder
    (pipeline/designs/language.py explains a size that does not fit, before anything is built)."""
    c1 = size - 4
    c3 = c1 // 2 - 4
    if c1 < 2 or c1 % 2 or c3 < 2 or c3 % 2 or c3 // 2 - 4 < 1:
        raise ValueError(f"LeNet-5 cannot take {axis}={size}; valid sizes are 32, 36, 40, ...")
    return c3 // 2 - 4


def build_lenet5_classic(
    input_shape: tuple[int, int, int] = (32, 32, 1),
    num_classes: int = 10,
    output: str = "rbf",
    seed: int | None = None,
    rubbish_penalty: float = DEFAULT_RUBBISH_PENALTY,
) -> keras.Model:
    """LeNet-5 as in LeCun et al. (1998); see the module docstring.

    Args:
        input_shape: ``(H, W, C)``; the paper's is ``(32, 32, 1)``.
        num_classes: number of output units (10 uses the digit bitmaps as
            RBF prototypes, anything else the seeded Hadamard codes).
        output: ``"rbf"`` (the paper's Euclidean RBF output, probabilities as
            ``softmax(-y, -j)`` without the rubbish column) or ``"softmax"``
            (``Dense(num_classes, softmax)``).
        seed: makes the initialisation reproducible (None: random).
        rubbish_penalty: the constant ``j`` of eq. 9 (RBF output only).

    Returns:
        An uncompiled ``keras.Model`` named ``lenet5_classic`` with layers
        ``c1, s2, c3, s4, c5, flatten, f6, output``; its output is class
        probabilities (float64 for ``"rbf"``, float32 for ``"softmax"``).
        Compile it with ``loss=loss_for(output)``.
    """
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUT_KINDS}, got {output!r}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (H, W, C), got {input_shape!r}")
    height, width, channels = (int(v) for v in input_shape)
    if channels < 1:
        raise ValueError("need at least one input channel")
    c5_h = _c5_size(height, "height")
    c5_w = _c5_size(width, "width")
    if num_classes < 2:
        raise ValueError("num_classes must be >= 2")

    inputs = keras.Input(shape=(height, width, channels), name="image")
    x = keras.layers.Conv2D(
        6,
        5,
        padding="valid",
        activation=scaled_tanh,
        kernel_initializer=paper_uniform(25 * channels, _sub_seed(seed, 1)),
        bias_initializer="zeros",
        name="c1",
    )(inputs)
    x = TrainableSubsampling(2, seed=_sub_seed(seed, 2), name="s2")(x)
    x = PartiallyConnectedConv2D(C3_CONNECTIONS, 5, seed=_sub_seed(seed, 3), name="c3")(x)
    x = TrainableSubsampling(2, seed=_sub_seed(seed, 4), name="s4")(x)
    x = keras.layers.Conv2D(
        120,
        5,
        padding="valid",
        activation=scaled_tanh,
        kernel_initializer=paper_uniform(25 * 16, _sub_seed(seed, 5)),
        bias_initializer="zeros",
        name="c5",
    )(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        84,
        activation=scaled_tanh,
        kernel_initializer=paper_uniform(120 * c5_h * c5_w, _sub_seed(seed, 6)),
        bias_initializer="zeros",
        name="f6",
    )(x)
    if output == "rbf":
        outputs = EuclideanRBF(num_classes, rubbish_penalty=rubbish_penalty, name="output")(x)
    else:
        outputs = keras.layers.Dense(
            num_classes,
            activation="softmax",
            kernel_initializer=paper_uniform(84, _sub_seed(seed, 7)),
            bias_initializer="zeros",
            name="output",
            dtype="float32",  # float32 scores under a mixed precision policy too
        )(x)
    return keras.Model(inputs, outputs, name="lenet5_classic")
