"""The numbers that define Bayesian Bits, in one place (docs/method.md §2–§5).

Plain Python constants, no imports: the reference (:mod:`bbits_ref.method`) and the PyTorch
port (:mod:`bbits_ref.torch_impl`) both read them from here, so the two implementations share
the method's numbers and nothing else.  Every formula built from them is written in each
implementation separately.
"""

__all__ = ["BIT_WIDTHS", "CHAIN_BITS", "CLIP_EPS", "CLIP_MODES", "STEP_DIVISORS",
           "HC_TEMPERATURE", "HC_GAMMA", "HC_ZETA", "HC_THRESHOLD", "HARD_CUT_LOGIT",
           "NOISE_CLAMP", "GATE_KINDS", "PRIOR_KINDS", "REG_TYPES", "INPUT_BITS",
           "FULL_PRECISION_BITS"]

# -- the quantizer (§2)
BIT_WIDTHS = (2, 4, 8, 16, 32)      # the widths a quantizer can select: z2 · (z4 · (z8 · …))
CHAIN_BITS = (4, 8, 16, 32)         # the scalar gates of every quantizer, in chain order
CLIP_EPS = 1e-7                     # hi = (1 − ε)·β (§2.2)
CLIP_MODES = ("official", "numpy")  # the official two-ReLU clip, or a plain clip (§2.3a)
STEP_DIVISORS = (5, 17, 257, 65537)  # s_{2b} = s_b / (2^b + 1): s2 → s4 → s8 → s16 → s32 (§2.3)

# -- the gates (§3)
HC_TEMPERATURE = 2 / 3              # hard-concrete temperature τ (code: `hc_beta`)
HC_GAMMA = -0.1                     # lower stretch limit γ (`hc_gamma`)
HC_ZETA = 1.1                       # upper stretch limit ζ (`hc_zeta`)
HC_THRESHOLD = 0.34                 # test time: z = 1 iff P(z = 0) < 0.34 (`hc_thres`, §3.4)
HARD_CUT_LOGIT = -2.0               # φ_b ≤ −2 cuts z_b and every higher gate (§3.5)
NOISE_CLAMP = 1e-6                  # u is clamped to [1e−6, 1 − 1e−6] (the L0 repository)
GATE_KINDS = ("hard_concrete", "gumbel_softmax")

# -- the prior (§4)
PRIOR_KINDS = ("autoregressive", "independent")
REG_TYPES = ("bop", "const")        # gate cost w_t·b (the README runs) or 1

# -- BOPs (§5)
INPUT_BITS = 8                      # the network input is counted as 8-bit, never quantized
FULL_PRECISION_BITS = 32            # the baseline: 32-bit weights and activations everywhere
