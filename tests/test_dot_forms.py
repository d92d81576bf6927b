"""benchmarks/dot_forms.py: its forms are the products they name; it prints them."""
import json

import jax.numpy as jnp
import numpy as np

from benchmarks import dot_forms


def test_forms_compute_the_dense_layer_products():
  rng = np.random.default_rng(0)
  x, w, g = (jnp.asarray(rng.standard_normal(s, np.float32))
             for s in ((12, 8), (8, 20), (12, 20)))
  f = dot_forms.forms()
  np.testing.assert_allclose(f["forward"](x, w, g), x @ w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(f["input_grad"](x, w, g), g @ w.T, rtol=1e-5, atol=1e-5)
  for name in ("weight_grad_xla", "weight_grad_ours"):
    np.testing.assert_allclose(f[name](x, w, g), x.T @ g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f[name](g, w.T, x), g.T @ x, rtol=1e-5, atol=1e-5)  # K > N


def test_prints_one_line_per_shape_and_dtype(capsys):
  dot_forms.main(["--reps", "1", "--shapes", "16,8,24;16,24,8"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["m"], r["k"], r["n"], r["dtype"]) for r in rows] == [
      (16, 8, 24, "float32"), (16, 8, 24, "bfloat16"),
      (16, 24, 8, "float32"), (16, 24, 8, "bfloat16")]
  assert all(r["weight_grad_ours_gflops_per_s"] > 0 for r in rows)
