"""Model hyper-parameters as one ConfigDict, shared by the model, configs and tests."""
import ml_collections


def default_model_config() -> ml_collections.ConfigDict:
  """The paper's MELDAE (SPEC §1); configs override what they need."""
  c = ml_collections.ConfigDict()
  c.backbone = "vit"            # 'vit' | 'resnet50' (ablation)
  c.variant = "B/16"            # ViT variant: Mu|Ti|S|B|L / <patch> (vit.VARIANTS)
  c.vit_stem = "patch"          # 'patch' (linear, the paper) | 'hmlp' (from scratch only)
  c.vit_stem_hidden = 32        # channels of the hMLP stem's inner stages
  c.image_size = 224            # face-crop side fed to the backbone
  c.resnet_width = 0            # D of the ResNet backbone (its CLS/patch projection); 0: the
                                # ViT variant's width, so the ablation swaps the backbone only
  c.resnet_stages = (3, 4, 6, 3)  # bottleneck units per stage: ResNet-50
  c.resnet_base_width = 64      # channels of the first stage (x4 at its output)
  c.num_frames = 16             # T: window length (sizes the temporal embedding)
  c.scan_blocks = False         # nn.scan over ViT blocks: faster compiles of deep models, but
                                # a slower step (CPU Ti112 train 1.09 -> 0.88 s unrolled;
                                # docs/performance.md); params load either way
  c.remat_policy = "none"       # 'none' | 'full' | 'dots' | 'dots_no_batch' (jax.checkpoint_policies)
  c.temporal = "bilstm"         # 'bilstm' | 'none' (Dense in its place)
  c.temporal_hidden = 0         # LSTM units per direction; 0: D/2 (SPEC §1.2)
  c.num_regions = 10            # G: G x G region pooling
  c.enhancer = True             # False: ablation without the Micro-Expression Enhancer
  c.num_queries = 16            # N
  c.enhancer_layers = 1         # L_e
  c.enhancer_heads = 12         # heads of the enhancer's cross-attention
  c.fusion = "per_frame"        # 'per_frame' | 'tokens'
  c.num_classes = 1             # K: 1 = micro, 2 = micro + macro
  c.dropout = 0.0
  c.dtype = "float32"           # compute dtype: 'float32' | 'bfloat16' (params stay float32)
  c.matmul_dtype = ""           # '' | 'bfloat16': Dense matmul operands rounded to it, f32
                                # sums and everything else as `dtype` (like PyTorch's
                                # autocast; CPU Ti112 train 0.30 -> see docs/performance.md)
  return c
