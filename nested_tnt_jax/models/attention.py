"""Multi-head attention, plain (timm) and nested (a chain of layers that carries its logits).

Nested multi-head attention (CODA, Zheng et al., ACL 2021; Nested ViT, Peng et al., ICME 2023)
lets each layer see the previous layer's attention logits:

    S_l = Q K^T / sqrt(d_head)                       shape (heads, batch, queries, keys)
    A_1 = S_1
    Z_l = S_l + Ã_{l-1},  A_l = Z_l + g_l(Z_l)       l >= 2
    Ã_l = A_l + ε, ε ~ N(0, 1) (training only)       carried to layer l + 1
    y   = proj(dropout(softmax(Ã_l)) V)

g_l (`LogitMixer`) is an MLP over the head axis at every (query, key) position. The carried
logits are an explicit input and output of `Attention.__call__`, never module state, so the
chain survives `nn.scan` and `nn.remat` untouched.

Logits are laid out heads first, (h, b, q, k): the mixer then is a plain (g, h) x (h, b*q*k)
matrix product over contiguous rows, with no transpose of the largest tensor in the model.
On a 2-core CPU this made the mixer's forward and backward 1.5-3x faster than contracting over
axis 1 of (b, h, q, k), and Nested-TNT's training step ~14% faster (benchmarks/throughput.py).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nested_tnt_jax.models.layers import Dtype, dense


# Xavier-uniform with gain 1/sqrt(2): variance_scaling's scale is gain**2.
mixer_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")
# On CPU the mixer runs over column blocks of this many hidden activations (1 MiB of float32
# per (hidden, block) array), so each block's whole MLP, forward and backward, stays in cache.
CPU_BLOCK_ELEMENTS = 2**18
# (kernel (fan_in, fan_out), bias (fan_out,)) of each mixer layer, fc1 to fc3.
MixerLayers = tuple[tuple[jax.Array, jax.Array], ...]
# On CPU the attention core's products are broadcast products for heads at most
# CPU_BROADCAST_MAX_DIM wide (TNT's word attention) and GEMMs on heads-first operands for heads
# at least CPU_HEADS_FIRST_MIN_DIM wide (outer and ViT attention); see `core_form`.
CPU_BROADCAST_MAX_DIM = 16
CPU_HEADS_FIRST_MIN_DIM = 32
CORE_FORMS = ("einsum", "heads_first", "broadcast")
# A model's `attention_core`: one of CORE_FORMS for every attention layer, or a rule that picks
# per head width (`core_form`): "auto" for programs compiled with XLA's defaults, such as a
# user's own `jax.jit(model.apply)`; "auto_xla_options" for programs compiled with
# `xla_options.step_compiler_options()`, as the trainer's steps are (`models.compiled_with`).
CORE_CHOICES = ("auto", "auto_xla_options", *CORE_FORMS)
LEAKY_SLOPE = 0.2  # the mixer's LeakyReLU; the hand-written backward uses it too


def _mixer_forward(layers: MixerLayers, z: jax.Array) -> list[jax.Array]:
    """The mixer on (h, n) columns; returns the pre-activations of every layer, output last."""
    pre = []
    y = z
    for i, (kernel, bias) in enumerate(layers):
        if i:
            y = nn.leaky_relu(pre[-1], LEAKY_SLOPE)
        pre.append(jnp.einsum("hn,hg->gn", y, kernel) + bias[:, None])
    return pre


def mix_heads(layers: MixerLayers, z: jax.Array, block: int = 0) -> jax.Array:
    """g(z) on (h, n) logits; `block` > 0 runs it over column blocks of about that width.

    Each layer is a (g, h) x (h, n) product with a tiny contraction, so on CPU the unblocked
    MLP is bound by memory traffic: its (hidden, n) activations (8 MiB per inner-chain layer of
    the CPU CIFAR model at batch 64) go through memory about twenty times per training step.
    Blocked, the forward and a hand-written backward (recomputing each block's activations)
    touch every element once in cache: 3-4x faster forward+backward on a 2-core CPU. Logits
    smaller than two blocks fit in cache anyway and run unblocked (recomputing would cost more
    than it saves). Same arithmetic per element; only the order of the parameter-gradient sums
    differs.
    """
    n = z.shape[1]
    if block <= 0 or n < 2 * block:
        return _mixer_forward(layers, z)[-1]
    num_blocks = -(-n // block)
    width = -(-n // num_blocks)  # equal blocks; zero columns pad the last (< num_blocks of them)
    padded = jnp.pad(z, ((0, 0), (0, num_blocks * width - n)))
    return _blocked_mixer(width, layers, padded)[:, :n]


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    return jnp.swapaxes(x.reshape(x.shape[0], -1, block), 0, 1)  # (h, n) -> (n / block, h, block)


def _from_blocks(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[1], -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked_mixer(block: int, layers: MixerLayers, z: jax.Array) -> jax.Array:
    out = jax.lax.map(lambda zb: _mixer_forward(layers, zb)[-1], _to_blocks(z, block))
    return _from_blocks(out)


def _blocked_mixer_fwd(block, layers, z):
    return _blocked_mixer(block, layers, z), (layers, z)


def _blocked_mixer_bwd(block, residuals, d_out):
    layers, z = residuals

    def block_grads(acc, blocks):
        zb, d = blocks
        pre = _mixer_forward(layers, zb)
        inputs = [zb] + [nn.leaky_relu(p, LEAKY_SLOPE) for p in pre[:-1]]
        grads = []
        for i in reversed(range(len(layers))):
            kernel = layers[i][0]
            if i < len(layers) - 1:  # through the LeakyReLU after layer i
                d = d * jnp.where(pre[i] >= 0, 1.0, LEAKY_SLOPE).astype(d.dtype)
            grads.append((jnp.einsum("hn,gn->hg", inputs[i], d, preferred_element_type=jnp.float32),
                          d.sum(axis=1, dtype=jnp.float32)))
            d = jnp.einsum("hg,gn->hn", kernel, d)
        acc = jax.tree.map(jnp.add, acc, tuple(reversed(grads)))
        return acc, d

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), layers)
    grads, d_z = jax.lax.scan(block_grads, zeros, (_to_blocks(z, block), _to_blocks(d_out, block)))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, layers)
    return grads, _from_blocks(d_z)


_blocked_mixer.defvjp(_blocked_mixer_fwd, _blocked_mixer_bwd)


def head_logits(q: jax.Array, k: jax.Array, form: str = "einsum") -> jax.Array:
    """(b, q, h, d) queries and keys -> scaled logits laid out heads first, (h, b, q, k).

    `form` (one of `CORE_FORMS`) picks how the product is written; all give the same values:
    `"einsum"` leaves the layouts to XLA; `"heads_first"` moves the operands to (h, b, n, d),
    so the product is a batched GEMM over contiguous (n, d) matrices; `"broadcast"` multiplies
    (h, b, q, 1, d) by (h, b, 1, k, d) and sums over d, elementwise loops that XLA fuses with
    their neighbours where a GEMM call per tiny (q, d) matrix would cost more than its work.
    """
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    if form == "einsum":
        return jnp.einsum("bqhd,bkhd->hbqk", q, k) * scale
    q, k = _heads_first(q), _heads_first(k)
    if form == "heads_first":
        return jnp.einsum("hbqd,hbkd->hbqk", q, k) * scale
    _check_form(form)
    products = q[:, :, :, None].astype(jnp.float32) * k[:, :, None].astype(jnp.float32)
    return jnp.sum(products, axis=-1).astype(q.dtype) * scale


def attend(attn: jax.Array, v: jax.Array, form: str = "einsum") -> jax.Array:
    """(h, b, q, k) attention weights and (b, k, h, d) values -> (b, q, h, d), `form` as above.

    Left to itself, XLA:CPU computes this product as (b, h, d, q) and transposes it after; in
    the `"heads_first"` form the output comes as (h, b, q, d), whose transpose back is cheap
    next to the product when d is large. `"broadcast"` sums (b, q, k, h, 1) x (b, 1, k, h, d)
    over k.
    """
    if form == "einsum":
        return jnp.einsum("hbqk,bkhd->bqhd", attn, v)
    if form == "heads_first":
        return jnp.transpose(jnp.einsum("hbqk,hbkd->hbqd", attn, _heads_first(v)), (1, 2, 0, 3))
    _check_form(form)
    weights = jnp.transpose(attn, (1, 2, 3, 0))[..., None].astype(jnp.float32)
    return jnp.sum(weights * v[:, None].astype(jnp.float32), axis=2).astype(v.dtype)


def _heads_first(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (2, 0, 1, 3))  # (b, n, h, d) -> (h, b, n, d)


def _check_form(form: str) -> None:
    if form not in CORE_FORMS:
        raise ValueError(f"Unknown attention core form {form!r}; the forms are {CORE_FORMS}.")


def core_form(choice: str, head_dim: int) -> str:
    """The form of `head_logits` and `attend` for an `attention_core` choice and head width.

    On a 2-core CPU (`python benchmarks/attention_core.py`, forward+backward), TNT-S's outer
    attention core (6 heads of 64) ran 1.7x faster heads first, its inner one (4 heads of 6)
    1.3x faster as broadcast products, and the 32 px models' inner one (2 heads of 8 over 4 or
    16 words) 5x and 1.4x; each form was slower than the einsum on the other kind of heads.
    The broadcast form needs the reductions kept out of YNNPACK (`xla_options`): under XLA's
    defaults YNNPACK takes them and the products are written out in full, ~12x slower, so
    plain "auto" keeps the einsum there. GPUs keep the einsum, as nothing has been measured.
    """
    if choice in CORE_FORMS:
        return choice
    check_core_choice(choice)
    if jax.default_backend() != "cpu":
        return "einsum"
    if head_dim >= CPU_HEADS_FIRST_MIN_DIM:
        return "heads_first"
    if head_dim <= CPU_BROADCAST_MAX_DIM and choice == "auto_xla_options":
        return "broadcast"
    return "einsum"


def check_core_choice(choice: str) -> None:
    """Raises ValueError, listing `CORE_CHOICES`, for anything else."""
    if choice not in CORE_CHOICES:
        raise ValueError(f"Unknown attention_core {choice!r}; use one of {', '.join(CORE_CHOICES)} "
                         "('auto' picks per head width).")


def choice_for_options(choice: str, compiler_options: dict[str, str]) -> str:
    """`choice` for a program compiled with `compiler_options` (`xla_options`' or none):
    "auto" becomes "auto_xla_options" where they are set; any other choice stays."""
    return "auto_xla_options" if choice == "auto" and compiler_options else choice


class HeadDense(nn.Module):
    """The parameters of one mixer layer over the head axis: kernel (fan_in, fan_out), bias."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, fan_in: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", mixer_init, (fan_in, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return kernel.astype(self.dtype), bias.astype(self.dtype)


class LogitMixer(nn.Module):
    """g(Z): heads -> ratio*heads -> ratio*heads -> heads, LeakyReLU(0.2) between the layers.

    Applied in the logits' own heads-first (h, b, q, k) layout, with (b, q, k) merged into one
    axis (a free reshape), so each layer is one matrix product and the large logit tensor is
    never transposed; on CPU over cache-sized column blocks (`mix_heads`). Xavier-uniform
    (gain 1/sqrt(2)) kernels, zero biases.

    Size: for TNT-S (inner 4 heads, outer 6 heads, ratio 4) the two mixers of a layer hold
    420 + 918 parameters, about 15k over 11 layers. The Nested-TNT paper reports ~2M more
    parameters than TNT, which this mixer does not explain; the hidden width is therefore
    configurable (`mixer_ratio`) rather than guessed.
    """

    num_heads: int
    ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        hidden = self.ratio * self.num_heads
        widths = (self.num_heads, hidden, hidden, self.num_heads)
        layers = tuple(HeadDense(fan_out, self.dtype, name=f"fc{i + 1}")(fan_in)
                       for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])))
        block = CPU_BLOCK_ELEMENTS // hidden if jax.default_backend() == "cpu" else 0
        return mix_heads(layers, z.reshape(z.shape[0], -1), block).reshape(z.shape)


class Attention(nn.Module):
    """timm's multi-head attention, optionally one link of a nested-attention chain.

    `fused_qkv` picks timm's ViT layout (one `qkv` Linear) over its TNT layout (`qk` and `v`).
    `__call__(x, prev_logits)` returns `(y, logits)`, logits laid out (heads, batch, q, k).
    With `nested=False` logits are None and this is exactly timm's attention. With
    `nested=True` the returned logits are Ã_l; pass `prev_logits=None` for the first layer of a
    chain (no mixer is created there). `mixer=False` drops g_l (A_l = S_l + Ã_{l-1});
    `logit_noise` scales ε (0 turns it off). Any leading batch shape works as one einsum batch,
    so TNT's inner attention over all B*N sentences is a single call. `core` (one of
    `CORE_CHOICES`) picks how QK^T and AV are written (`core_form`); every choice computes the
    same values.
    """

    dim: int
    num_heads: int
    qkv_bias: bool = False
    fused_qkv: bool = False
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    nested: bool = False
    mixer: bool = True
    mixer_ratio: int = 4
    logit_noise: float = 1.0
    deterministic: bool = True
    core: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, prev_logits: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array | None]:
        b, n, _ = x.shape
        h = self.num_heads
        d = self.dim // h
        if self.fused_qkv:
            qkv = dense(3 * self.dim, "qkv", self.dtype, self.qkv_bias)(x).reshape(b, n, 3, h, d)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            qk = dense(2 * self.dim, "qk", self.dtype, self.qkv_bias)(x).reshape(b, n, 2, h, d)
            q, k = qk[:, :, 0], qk[:, :, 1]
            v = dense(self.dim, "v", self.dtype, self.qkv_bias)(x).reshape(b, n, h, d)

        form = core_form(self.core, d)
        logits = head_logits(q, k, form)
        carried = None
        if self.nested:
            if prev_logits is not None:
                logits = logits + prev_logits.astype(logits.dtype)
                if self.mixer:
                    logits = logits + LogitMixer(h, self.mixer_ratio, self.dtype, name="mixer")(logits)
            if not self.deterministic and self.logit_noise > 0.0:
                noise = jax.random.normal(self.make_rng("noise"), logits.shape, logits.dtype)
                logits = logits + jnp.asarray(self.logit_noise, logits.dtype) * noise
            carried = logits

        # Exposes the pre-softmax logits for inspection (`visualize.py`); a no-op unless the
        # caller makes "intermediates" mutable.
        self.sow("intermediates", "attention_logits", jnp.swapaxes(logits, 0, 1))
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        attn = nn.Dropout(self.attn_drop)(attn, deterministic=self.deterministic)
        y = attend(attn, v, form).reshape(b, n, self.dim)
        y = dense(self.dim, "proj", self.dtype)(y)
        y = nn.Dropout(self.proj_drop)(y, deterministic=self.deterministic)
        return y, carried
