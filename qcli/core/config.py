"""Configuration: frozen dataclasses and str Enums. CLI defaults are read from here, and so is validation:
the API and the CLI accept and refuse the same things."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from qcli.core.errors import InputError
from qcli.core.overrides import CalibMethod, Overrides, Precision, check_percentile, matches


class Scheme(str, Enum):
    W8A8 = "w8a8"  # static: int8 weights, 8-bit activations, QDQ
    W4A16 = "w4a16"  # weight-only int4, block-wise; activations stay float
    W8A16 = "w8a16"  # weight-only int8, block-wise; activations stay float
    DYNAMIC = "dynamic"  # int8 weights, activations quantized at run time (no calibration data)


class Objective(str, Enum):
    LATENCY = "latency"  # the fastest model within the accuracy guard; never slower than FP32 by choice
    SIZE = "size"  # quantize every op that can be, whatever it does to latency


class Placement(str, Enum):
    MEASURED = "measured"  # time the alternatives the static cost rule is unsure about on this CPU
    STATIC = "static"  # the cost rule alone: deterministic, the same plan on every machine


class WeightFormat(str, Enum):
    """How weight-only schemes are written."""

    AUTO = "auto"  # measure on this CPU which form (and accuracy level) is fastest
    QDQ = "qdq"  # portable: block-wise DequantizeLinear -> MatMul / Gather
    ORT = "ort"  # onnxruntime's com.microsoft MatMulNBits / GatherBlockQuantized


class WeightAlgo(str, Enum):
    RTN = "rtn"  # round to nearest (optionally with a per-block clipping search: --clip-search)
    GPTQ = "gptq"  # Hessian-based error feedback from calibration activations (Frantar et al. 2022)
    AWQ = "awq"  # activation-aware per-input-channel scales searched on calibration data (Lin et al. 2023)


MIN_BLOCK, MAX_BLOCK = 16, 256
MAX_TIMING_BATCH, MAX_TIMING_SIZES = 4096, 4

# Options that only mean something for some schemes (field name -> CLI flag, schemes that read it).
_SCHEME_ONLY = {
    "per_channel": ("--per-tensor", {Scheme.W8A8, Scheme.DYNAMIC}),
    "activation_symmetric": ("--activation-symmetric", {Scheme.W8A8}),
    "reduce_range": ("--reduce-range/--no-reduce-range", {Scheme.W8A8, Scheme.DYNAMIC}),
    "calibrator": ("--calibrator", {Scheme.W8A8}),
    "calib_limit": ("--calib-limit", {Scheme.W8A8}),
    "percentile": ("--percentile", {Scheme.W8A8}),
    "moving_average": ("--moving-average", {Scheme.W8A8}),
    "smooth_quant": ("--smooth-quant", {Scheme.W8A8}),
    "equalize": ("--equalize", {Scheme.W8A8}),
    "overrides": ("--overrides", {Scheme.W8A8, Scheme.DYNAMIC}),
    "min_sqnr": ("--min-sqnr", set(Scheme)),
    "max_top1_drop": ("--max-top1-drop", set(Scheme)),
    "min_macs_per_conversion": ("--min-macs", {Scheme.W8A8}),
    "objective": ("--objective", {Scheme.W8A8, Scheme.W4A16, Scheme.W8A16}),
    "placement": ("--placement", {Scheme.W8A8, Scheme.W4A16, Scheme.W8A16}),
    "min_activation_sqnr": ("--min-act-sqnr", {Scheme.W8A8}),
    "accuracy_guard": ("--no-guard", {Scheme.W8A8}),
    "block_size": ("--block-size", {Scheme.W4A16, Scheme.W8A16}),
    "weight_symmetric_int4": ("--weight-asymmetric", {Scheme.W4A16, Scheme.W8A16}),
    "weight_format": ("--format", {Scheme.W4A16, Scheme.W8A16}),
    "clip_search": ("--clip-search", {Scheme.W4A16, Scheme.W8A16}),
    "weight_algo": ("--weight-algo", {Scheme.W4A16, Scheme.W8A16}),
    "gptq_damp": ("--gptq-damp", {Scheme.W4A16, Scheme.W8A16}),
    "gptq_act_order": ("--act-order", {Scheme.W4A16, Scheme.W8A16}),
    "timing_batches": ("--timing-batch", {Scheme.W4A16, Scheme.W8A16}),
}


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides how a model is quantized. Saved (versioned) in every report."""

    scheme: Scheme = Scheme.W8A8
    # W8A8
    per_channel: bool = True
    activation_symmetric: bool = False  # False: uint8 asymmetric; True: int8 symmetric
    # 7-bit weights so uint8 x int8 products cannot saturate on x86 CPUs without VNNI.
    # None: decide from the CPU quantizing (see hostcpu.py); the plan records the choice and why.
    reduce_range: bool | None = None
    calibrator: CalibMethod = CalibMethod.MINMAX
    calib_limit: int | None = None
    percentile: float = 99.99  # "percentile": the share of values (two-sided) the range keeps
    moving_average: float | None = None  # "minmax": EMA constant per batch instead of the global min/max
    # SmoothQuant: migrate activation outliers into the next MatMul/Gemm weights with strength alpha (0..1).
    smooth_quant: float | None = None
    # Cross-layer equalization of Conv -> (Relu) -> Conv pairs before calibration (Nagel et al. 2019).
    equalize: bool = False
    overrides: Overrides = field(default_factory=Overrides)  # per-tensor calibration method (TOML file)
    # Cost model: an int8 op whose inputs/outputs must be converted from/to float is kept float when it
    # does fewer than this many multiply-accumulates per converted element (the Q/DQ would cost more than
    # the integer kernel wins).
    min_macs_per_conversion: float = 48.0
    objective: Objective = Objective.LATENCY
    placement: Placement = Placement.MEASURED
    # Accuracy guard (guard.py): the layers that cause a large share of the noise at the model's outputs
    # stay float. Replaced by an accuracy target when one is given.
    accuracy_guard: bool = True
    # Expert switch, off by default: compute ops reading an activation that quantizes (alone, per tensor) to
    # fewer dB than this stay float (well-spread tensors give 35-45 dB; BERT LayerNorm/GELU outputs ~20).
    min_activation_sqnr: float = 0.0
    fold_batchnorm: bool = True
    # Accuracy target: the fewest layers back to float (w4a16: weights raised to 8-bit blocks) until every
    # output reaches this SQNR (dB) and/or at most this % of class-score rows change their top-1, on data not
    # used for calibration.
    min_sqnr: float | None = None
    max_top1_drop: float | None = None
    # W4A16
    block_size: int = 32
    weight_symmetric_int4: bool = True
    weight_algo: WeightAlgo = WeightAlgo.RTN
    weight_format: WeightFormat = WeightFormat.AUTO
    clip_search: bool = False  # rtn: per block, the clipping ratio with the least (activation-weighted) error
    # gptq: diagonal damping, as a fraction of the mean diagonal of X^T X. 0.01 (the paper's) overfit
    # small calibration sets: on MiniLM it cut the output error 6x on the calibration data, not at all on
    # held-out data; 0.1 gave 14.9 dB there against rtn's 12.5.
    gptq_damp: float = 0.1
    gptq_act_order: bool = False  # gptq: quantize columns in order of decreasing activation energy
    # --format auto and measured placement time the model at these batch sizes (rows of the data repeated or
    # cut) and judge a form by its worst: int4's speed against float depends on the batch (batches.py).
    timing_batches: tuple[int, ...] = (1, 8)
    # Both: node names, op types or node-name globs (fnmatch: *, ?, [..]) kept float
    exclude: tuple[str, ...] = field(default_factory=tuple)

    VERSION = 1

    def __post_init__(self) -> None:
        for name, enum in (
            ("scheme", Scheme),
            ("calibrator", CalibMethod),
            ("weight_algo", WeightAlgo),
            ("weight_format", WeightFormat),
            ("objective", Objective),
            ("placement", Placement),
        ):
            try:
                object.__setattr__(self, name, enum(getattr(self, name)))
            except ValueError:
                known = ", ".join(e.value for e in enum)
                raise InputError(f"unknown {name} {getattr(self, name)!r} (known: {known})") from None
        b = self.block_size
        if not (MIN_BLOCK <= b <= MAX_BLOCK) or b & (b - 1):
            raise InputError(f"--block-size must be a power of two from {MIN_BLOCK} to {MAX_BLOCK} (got {b})")
        object.__setattr__(self, "timing_batches", tuple(dict.fromkeys(self.timing_batches)))
        sizes = self.timing_batches
        if (
            not sizes
            or len(sizes) > MAX_TIMING_SIZES
            or not all(type(n) is int and 1 <= n <= MAX_TIMING_BATCH for n in sizes)
        ):
            raise InputError(
                f"--timing-batch takes 1 to {MAX_TIMING_SIZES} batch sizes from 1 to {MAX_TIMING_BATCH} "
                f"(got {', '.join(map(str, sizes)) or 'none'})"
            )
        if self.calib_limit is not None and self.calib_limit < 1:
            raise InputError(f"--calib-limit must be at least 1 (got {self.calib_limit})")
        check_percentile(self.percentile)
        if self.moving_average is not None and not (0 < self.moving_average <= 1):
            raise InputError(f"--moving-average must be in (0, 1] (got {self.moving_average:g})")
        if self.smooth_quant is not None and not (0 <= self.smooth_quant <= 1):
            raise InputError(f"--smooth-quant ALPHA must be from 0 to 1 (got {self.smooth_quant:g})")
        if not (0 < self.gptq_damp < 1):
            raise InputError(f"--gptq-damp must be between 0 and 1 (got {self.gptq_damp:g})")
        if self.max_top1_drop is not None and not (0 <= self.max_top1_drop <= 100):
            raise InputError(f"--max-top1-drop must be a percentage from 0 to 100 (got {self.max_top1_drop:g})")
        if self.min_macs_per_conversion < 0:
            raise InputError(f"--min-macs must be >= 0 (got {self.min_macs_per_conversion:g})")
        if self.min_activation_sqnr < 0:
            raise InputError(f"--min-act-sqnr must be >= 0 dB (got {self.min_activation_sqnr:g})")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if any(not p for p in self.exclude):
            raise InputError("--exclude needs a node name, an op type or a glob, not an empty string")

    @property
    def macs_threshold(self) -> float:
        """The cost rule's threshold as applied: none when the smallest model is the objective."""
        return 0.0 if self.objective == Objective.SIZE else self.min_macs_per_conversion

    def excluded_by(self, node_name: str, op_type: str) -> str | None:
        """The --exclude pattern (or overrides-file entry with precision float) that keeps this node float,
        or None. The one exclusion test."""
        for pattern in self.exclude:
            if matches(pattern, node_name, op_type):
                return pattern
        o = self.overrides.for_node(node_name, op_type)
        return f'[nodes."{o.pattern}"]' if o is not None and o.precision == Precision.FLOAT else None

    def mentions(self, node) -> bool:
        """Whether --exclude or an overrides-file entry matches this node as it is in the input (preprocessing
        leaves such nodes as they are, so the user's pattern keeps meaning what it says)."""
        return (
            self.excluded_by(node.name, node.op_type) is not None
            or self.precision_of(node.name, node.op_type) is not None
        )

    def precision_of(self, node_name: str, op_type: str) -> Precision | None:
        """The overrides file's precision for this node, if an entry matches."""
        o = self.overrides.for_node(node_name, op_type)
        return o.precision if o else None

    def calib_for(self, tensor: str) -> tuple[CalibMethod, float]:
        """The calibration method and percentile for one activation: its override, or the global ones."""
        o = self.overrides.for_tensor(tensor)
        if o is None:
            return self.calibrator, self.percentile
        return o.calibrator, self.percentile if o.percentile is None else o.percentile

    def ignored_options(self) -> list[str]:
        """Flags set away from their default that the chosen scheme does not read (a silent no-op otherwise)."""
        out = []
        for f in fields(self):
            flag, schemes = _SCHEME_ONLY.get(f.name, (None, None))
            if flag and self.scheme not in schemes and getattr(self, f.name) != getattr(DEFAULT, f.name):
                out.append(flag)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d = {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}
        d["exclude"] = list(self.exclude)
        d["timing_batches"] = list(self.timing_batches)
        d["overrides"] = self.overrides.to_dict() if self.overrides else None
        return {"version": self.VERSION, **d}


DEFAULT = QuantConfig()


def effective(config: QuantConfig, decisions: dict[str, dict]) -> dict:
    """The configuration as applied: fields the scheme does not read are left out, and choices left to
    qcli (reduce_range: None) are replaced by what was decided (the why is in `decisions`)."""
    d = config.to_dict()
    for name, (_, schemes) in _SCHEME_ONLY.items():
        if config.scheme not in schemes:
            d.pop(name, None)
    for name, decided in decisions.items():
        if name in d:
            d[name] = decided["value"]
    return d


def unmatched_excludes(config: QuantConfig, nodes) -> list[str]:
    """--exclude patterns that match no node (name, op type or glob) of `nodes`."""
    pairs = [(n.name, n.op_type) for n in nodes]
    return [p for p in config.exclude if not any(matches(p, *pair) for pair in pairs)]
