"""Bounds and choices that more than one checked boundary applies (the config, the CLI, the Python
API and the kernels' launchers), declared once so that every boundary refuses the same values. Plain
constants: the command's --help reads them without importing torch."""

__all__ = ["MIN_TEMPERATURE", "MAX_TEMPERATURE", "MAX_SCALED_LOGIT", "BACKENDS", "MAX_BUCKETS", "CHAIN_RULE_NAMES",
           "FLOPS_RANGE_RULES", "FLOPS_UNIT", "FLOPS_DEFINITION", "MAX_DECODED_BYTES"]

# Θ's backends (klas.scoring.kl): "reference" is the float64 oracle of the tests
BACKENDS = ("auto", "reference", "torch", "native", "triton")

# The softmax temperature τ: the kernels multiply logits by 1/τ in float32, which must be finite.
MIN_TEMPERATURE = 1e-30
MAX_TEMPERATURE = 1e6

# Θ is computed for logits whose magnitude over the temperature stays below this: a softmax is one-hot
# in float32 long before (exp(-104) is 0), and beyond it the float32 sums of a chunk could overflow.
MAX_SCALED_LOGIT = 1e6

# The selection's FLOPs buckets per anchor pair: far more than any pair has configurations.
MAX_BUCKETS = 10_000

# The selection's rules by name (klas.selection.select implements them; its CHAIN_RULES maps these
# names to the functions, and a test holds the two lists equal).
CHAIN_RULE_NAMES = ("minimax", "nearest")
FLOPS_RANGE_RULES = ("exclude", "end-buckets")

# What klas calls FLOPs everywhere: multiply-accumulates of the matrix products and convolutions, the
# convention of timm, fvcore, SN-Net and the papers (ResNet-20 at 32x32: 41 M). Recorded beside every
# stored count (cache manifests, scores, selections) and part of every stage fingerprint from scoring
# on; torch.utils.flop_counter counts a multiply-accumulate as two.
FLOPS_UNIT = "mac"
FLOPS_DEFINITION = "multiply-accumulates of one image (the convention of timm, fvcore and SN-Net)"

# Decoded images a stage keeps in memory to reuse instead of decoding them again (the recovery test's
# test set and step batches, the same for every source block): kept only when they fit in this.
MAX_DECODED_BYTES = 2 * 2**30
