"""Sweep definitions: lists of `--config.<key>=<value>` overrides, one dict per run.

  get_sweep('loc_loss')   Figure 4: the localisation loss (BAL against the paper's five
                          baselines MAE, MSE, IoU, Smooth L1, BCE, plus Table 3's
                          Focal Tversky alone, row 8).
  get_sweep('ablations')  Table 3: one component removed per run.
  get_sweep('table2')     Table 2's MELDAE and MELDAE* (w/o the enhancer), the two rows
                          it gives per corpus (CAS(ME)^2, SAMM, MMEW: Table 3 is WDMD's).
  get_sweep('lambda')     Table 4: the boundary term's weight lambda.
  get_sweep('tokens')     Table 4: the enhancer's number of query tokens N.
  get_sweep('seeds')      three seeds of the full model.
Standalone (no project imports), so the launcher can read it anywhere.
"""

LOC_LOSSES = ("bal", "bce", "iou", "focal_tversky", "mae", "mse", "smooth_l1")


# The paper configs' `optimizer.groups` (configs/common.py's paper_model).
PAPER_GROUPS = (("backbone/.*", 1e-5), (".*", 5e-4))
# The sweeps whose runs depend on the config's optimizer.groups (launch.py reads them).
USES_GROUPS = ("ablations",)


def resnet50_ablation(groups=PAPER_GROUPS) -> dict:
  """Table 3's ResNet-50 run on a config with these `optimizer.groups`. The ResNet-50 has
  no pretrained loader (model_init is a ViT checkpoint), so it trains from scratch: its
  groups take the rest's learning rate (the first group not for the backbone), not the
  ViT's fine-tuning 1e-5. Every other group keeps the config's, so that only the backbone
  changes (a fixed 5e-4 for all moved the rest of the model too on configs at 1e-3)."""
  groups = tuple((str(rx), lr) for rx, lr in groups)
  rest = [lr for rx, lr in groups if not rx.startswith("backbone")]
  if not rest:
    raise ValueError(f"optimizer.groups {groups}: no group for the parts besides the "
                     "backbone, whose learning rate the ResNet-50 run would take")
  groups = tuple((rx, rest[0] if rx.startswith("backbone") else lr) for rx, lr in groups)
  return {"model.backbone": "resnet50", "model_init": "", "optimizer.groups": groups}


def get_sweep(name: str, groups=PAPER_GROUPS) -> list[dict]:
  """The sweep's runs; `groups`: the config's optimizer.groups (see USES_GROUPS)."""
  if name == "loc_loss":
    return [{"loss.loc_loss": loss} for loss in LOC_LOSSES]
  if name == "ablations":
    return [
        {},                                     # 1: full model
        {"model.enhancer": False},              # 2: w/o Micro-Expression Enhancer
        resnet50_ablation(groups),              # 3: ResNet-50 instead of ViT
        {"model.temporal": "none"},             # 4: w/o Bi-LSTM
        {"loss.state_weight": 0.0},             # 5: w/o L_State
        {"loss.loc_loss": "bce"},               # 6: BCE instead of BAL
        {"loss.loc_loss": "iou"},               # 7: IoU instead of BAL
        {"loss.loc_loss": "focal_tversky"},     # 8: BAL w/o the boundary term
    ]
  if name == "table2":
    return [{}, {"model.enhancer": False}]
  if name == "lambda":
    return [{"loss.boundary_lambda": v} for v in (0.5, 1.0, 1.5, 2.0)]
  if name == "tokens":
    return [{"model.num_queries": n} for n in (4, 8, 16, 32)]
  if name == "seeds":
    return [{"seed": s} for s in (0, 1, 2)]
  raise ValueError(f"Unknown sweep {name!r} ({', '.join(SWEEPS)}).")


SWEEPS = ("loc_loss", "ablations", "table2", "lambda", "tokens", "seeds")


def run_name(overrides: dict) -> str:
  """The run's folder name from its scalar overrides (tuples and empty values left out)."""
  if not overrides:
    return "full"
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(overrides.items())
                  if isinstance(v, (str, int, float, bool)) and v != "")
