"""benchmarks/ab_step.py: each variant really undoes its optimisation when tracing."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import ab_step
from meldae_jax.models import vit
from meldae_jax.ops import blas_attention


def _vit_hlo(variant):
  model = vit.ViT("Mu/8", scan=False)
  x = jnp.zeros((1, 16, 16, 3), jnp.float32)
  with ab_step.undone(variant):
    params = model.init(jax.random.key(0), x, train=False)
    text = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(params, x).as_text()
    out = jax.jit(lambda p, x: model.apply(p, x, train=False))(params, x + 0.5)
  return text, params, out


def test_variants_change_the_traced_program_not_the_function():
  cur_text, cur_params, cur_out = _vit_hlo("sgemm_dots")
  conv_text, conv_params, conv_out = _vit_hlo("conv_embed+xla_dots+erfc_gelu+xla_attention")
  assert "convolution" not in cur_text and "convolution" in conv_text
  assert "meldae_gemm" in cur_text and "meldae_gemm" not in conv_text  # any CPU
  assert "erfc" not in cur_text and "erfc" in conv_text
  if blas_attention.enabled(jnp.float32):
    assert "meldae_attention" in cur_text and "meldae_attention" not in conv_text
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(cur_params),
               nn.unbox(conv_params))  # same parameters and initial values
  for a, b in zip(cur_out, conv_out):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert vit.PatchEmbed is not ab_step.ConvEmbed  # restored


def test_unknown_variant_is_an_error():
  with pytest.raises(ValueError, match="valid"):
    with ab_step.undone("xla_dots+fast_math"):
      pass
  with pytest.raises(ValueError, match="exclude"):
    with ab_step.undone("xla_dots+sgemm_dots"):
      pass


def test_lhs_t_weight_grads_swaps_the_weight_gradient_and_restores_it():
  from meldae_jax.ops import blas_dot  # pylint: disable=g-import-not-at-top
  ours = blas_dot.weight_grad
  with ab_step.undone("lhs_t_weight_grads"):
    assert blas_dot.weight_grad is blas_dot.transposed_lhs_dot
  assert blas_dot.weight_grad is ours


def test_copy_weight_grads_switches_sgemm_weight_gradients_off_and_restores_them():
  from meldae_jax.ops import blas_dot  # pylint: disable=g-import-not-at-top
  ours = blas_dot.sgemm_weight_grads
  with ab_step.undone("copy_weight_grads"):
    assert blas_dot.sgemm_weight_grads() is False
  assert blas_dot.sgemm_weight_grads is ours


def test_xla_qkv_bias_adds_the_bias_to_the_projection_again():
  """Where the sgemm attention runs, its calls take the q|k|v bias apart; the variant
  has XLA add it to the whole (N, L, 3D) projection first. Same function."""
  import re  # pylint: disable=g-import-not-at-top
  if not blas_attention.enabled(jnp.float32):
    pytest.skip("no sgemm attention here")
  adds = lambda text: len(re.findall(r"stablehlo.add .*x192xf32>", text))  # noqa: E731
  cur_text, _, cur_out = _vit_hlo("current")  # Mu: 3D = 192
  xla_text, _, xla_out = _vit_hlo("xla_qkv_bias")
  assert adds(xla_text) == adds(cur_text) + 2  # one per block
  for a, b in zip(cur_out, xla_out):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
