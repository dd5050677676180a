"""Configuration: frozen dataclasses and str Enums. CLI defaults are read from here, and so is validation:
the API and the CLI accept and refuse the same things."""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
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
    ADAROUND = "adaround"  # learned up-or-down rounding per weight on the statistics GPTQ reads (Nagel et al. 2020)


MIN_BLOCK, MAX_BLOCK = 16, 256
MAX_TIMING_BATCH, MAX_TIMING_SIZES = 4096, 4


def _flag(flag: str, default=MISSING, *, default_factory=MISSING):
    """A field with the CLI flag that sets it (named when the chosen scheme does not read it)."""
    return field(default=default, default_factory=default_factory, metadata={"flag": flag})


def check_limits(min_sqnr=None, max_top1_drop=None, max_accuracy_drop=None) -> None:
    """Targets and gates: finite dB, percentages from 0 to 100 (a NaN limit: every gate fails, every target met)."""
    if min_sqnr is not None and not math.isfinite(min_sqnr):
        raise InputError(f"--min-sqnr must be a number of dB (got {min_sqnr:g})")
    for flag, pct in (("--max-top1-drop", max_top1_drop), ("--max-accuracy-drop", max_accuracy_drop)):
        if pct is not None and not (0 <= pct <= 100):
            raise InputError(f"{flag} must be a percentage from 0 to 100 (got {pct:g})")


def _coerce(obj, **enums) -> None:
    """str -> Enum for the named fields of a frozen dataclass; an unknown value is an InputError."""
    for name, enum in enums.items():
        try:
            object.__setattr__(obj, name, enum(getattr(obj, name)))
        except ValueError:
            known = ", ".join(e.value for e in enum)
            raise InputError(f"unknown {name} {getattr(obj, name)!r} (known: {known})") from None


@dataclass(frozen=True)
class Int8Options:
    """Int8 weights: read by w8a8 and dynamic."""

    per_channel: bool = _flag("--per-tensor", True)
    # 7-bit weights so uint8 x int8 products cannot saturate on x86 CPUs without VNNI.
    # None: decide from the CPU quantizing (see hostcpu.py); the plan records the choice and why.
    reduce_range: bool | None = _flag("--reduce-range/--no-reduce-range", None)
    # Per-tensor calibration method and per-node precision (TOML file, calibration/overrides.py)
    overrides: Overrides = _flag("--overrides", default_factory=Overrides)


@dataclass(frozen=True)
class W8A8Options:
    """Static int8 activations: calibration, the cost rule, the accuracy guard and the float rewrites."""

    activation_symmetric: bool = _flag("--activation-symmetric", False)  # False: uint8 asymmetric
    calibrator: CalibMethod = _flag("--calibrator", CalibMethod.AUTO)
    calib_limit: int | None = _flag("--calib-limit", None)
    percentile: float = _flag("--percentile", 99.99)  # "percentile": the share of values (two-sided) kept
    moving_average: float | None = _flag("--moving-average", None)  # "minmax": EMA constant per batch
    # SmoothQuant: migrate activation outliers into the next MatMul/Gemm weights with strength alpha (0..1).
    smooth_quant: float | None = _flag("--smooth-quant", None)
    # Cross-layer equalization of Conv -> (Relu) -> Conv pairs before calibration (Nagel et al. 2019).
    equalize: bool = _flag("--equalize", False)
    # Per-channel scaling around activations no scale crosses (HardSwish, SiLU, ...), exact in float, on
    # tensors whose widest channel reaches OUTLIER_SPREAD x the median one (--equalize: any 4x spread).
    channel_scaling: bool = _flag("--no-channel-scaling", True)
    # Cost model: an int8 op whose inputs/outputs must be converted from/to float is kept float when it
    # does fewer than this many multiply-accumulates per converted element (the Q/DQ would cost more than
    # the integer kernel wins).
    min_macs_per_conversion: float = _flag("--min-macs", 48.0)
    # Accuracy guard (steps/guard.py): the layers that cause a large share of the noise at the model's outputs
    # stay float. Replaced by an accuracy target when one is given.
    accuracy_guard: bool = _flag("--no-guard", True)
    # Bias correction (steps/bias.py): each int8 Conv/Gemm's mean output shift folded into its bias, kept where
    # the model measures better on held data.
    bias_correction: bool = _flag("--no-bias-correction", True)
    # Expert switch, off by default: compute ops reading an activation that quantizes (alone, per tensor) to
    # fewer dB than this stay float (well-spread tensors give 35-45 dB; BERT LayerNorm/GELU outputs ~20).
    min_activation_sqnr: float = _flag("--min-act-sqnr", 0.0)

    def __post_init__(self) -> None:
        _coerce(self, calibrator=CalibMethod)
        if self.calib_limit is not None and self.calib_limit < 1:
            raise InputError(f"--calib-limit must be at least 1 (got {self.calib_limit})")
        check_percentile(self.percentile)
        if self.moving_average is not None and not (0 < self.moving_average <= 1):
            raise InputError(f"--moving-average must be in (0, 1] (got {self.moving_average:g})")
        if self.smooth_quant is not None and not (0 <= self.smooth_quant <= 1):
            raise InputError(f"--smooth-quant ALPHA must be from 0 to 1 (got {self.smooth_quant:g})")
        if self.min_macs_per_conversion < 0:
            raise InputError(f"--min-macs must be >= 0 (got {self.min_macs_per_conversion:g})")
        if self.min_activation_sqnr < 0:
            raise InputError(f"--min-act-sqnr must be >= 0 dB (got {self.min_activation_sqnr:g})")


@dataclass(frozen=True)
class WeightOnlyOptions:
    """Block-wise weights, compute in float: read by w4a16 and w8a16."""

    block_size: int = _flag("--block-size", 32)
    weight_symmetric_int4: bool = _flag("--weight-asymmetric", True)
    weight_algo: WeightAlgo = _flag("--weight-algo", WeightAlgo.RTN)
    weight_format: WeightFormat = _flag("--format", WeightFormat.AUTO)
    clip_search: bool = _flag("--clip-search", False)  # per block, the clipping ratio with the least error
    # gptq: diagonal damping, as a fraction of the mean diagonal of X^T X. 0.01 (the paper's) overfit
    # small calibration sets: on MiniLM it cut the output error 6x on the calibration data, not at all on
    # held-out data; 0.1 gave 14.9 dB there against rtn's 12.5.
    gptq_damp: float = _flag("--gptq-damp", 0.1)
    gptq_act_order: bool = _flag("--act-order", False)  # gptq: columns in order of decreasing activation energy
    # --format auto and measured placement time the model at these batch sizes (rows of the data repeated or
    # cut) and judge a form by its worst: int4's speed against float depends on the batch (io/batches.py).
    timing_batches: tuple[int, ...] = _flag("--timing-batch", (1, 8))

    def __post_init__(self) -> None:
        _coerce(self, weight_algo=WeightAlgo, weight_format=WeightFormat)
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
        if not (0 < self.gptq_damp < 1):
            raise InputError(f"--gptq-damp must be between 0 and 1 (got {self.gptq_damp:g})")


GROUPS = {"int8": Int8Options, "w8a8": W8A8Options, "weight_only": WeightOnlyOptions}
# What each scheme reads: its option groups, and the common options it ignores. The one table of its kind.
READS: dict[Scheme, tuple[str, ...]] = {
    Scheme.W8A8: ("int8", "w8a8"),
    Scheme.DYNAMIC: ("int8",),
    Scheme.W4A16: ("weight_only",),
    Scheme.W8A16: ("weight_only",),
}
IGNORES: dict[Scheme, tuple[str, ...]] = {Scheme.DYNAMIC: ("objective", "placement")}


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides how a model is quantized: the options every scheme reads, then one group of
    options per kind of scheme (GROUPS). Saved (versioned, flat) in every report. `QuantConfig.of(**flat)` takes
    the options by name, as the CLI's flags name them."""

    scheme: Scheme = Scheme.W8A8
    objective: Objective = _flag("--objective", Objective.LATENCY)
    placement: Placement = _flag("--placement", Placement.MEASURED)
    fold_batchnorm: bool = True
    # Accuracy target: the fewest layers back to float (w4a16: weights raised to 8-bit blocks) until every
    # output reaches this SQNR (dB) and/or at most this % of class-score rows change their top-1, on data not
    # used for calibration.
    min_sqnr: float | None = None
    max_top1_drop: float | None = None
    # Node names, op types or node-name globs (fnmatch: *, ?, [..]) kept float
    exclude: tuple[str, ...] = field(default_factory=tuple)
    int8: Int8Options = field(default_factory=Int8Options)
    w8a8: W8A8Options = field(default_factory=W8A8Options)
    weight_only: WeightOnlyOptions = field(default_factory=WeightOnlyOptions)

    VERSION = 1

    def __post_init__(self) -> None:
        _coerce(self, scheme=Scheme, objective=Objective, placement=Placement)
        check_limits(min_sqnr=self.min_sqnr, max_top1_drop=self.max_top1_drop)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if any(not p for p in self.exclude):
            raise InputError("--exclude needs a node name, an op type or a glob, not an empty string")

    @classmethod
    def of(cls, **options) -> QuantConfig:
        """The configuration from options named as in to_dict() (flat): each goes to its group."""
        grouped: dict[str, dict] = {g: {} for g in GROUPS}
        for name in list(options):
            group = next((g for g, kind in GROUPS.items() if name in kind.__dataclass_fields__), None)
            if group is not None:
                grouped[group][name] = options.pop(name)
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        return cls(**options, **{g: GROUPS[g](**kw) for g, kw in grouped.items()})

    @property
    def macs_threshold(self) -> float:
        """The cost rule's threshold as applied: none when the smallest model is the objective."""
        return 0.0 if self.objective == Objective.SIZE else self.w8a8.min_macs_per_conversion

    def excluded_by(self, node_name: str, op_type: str) -> str | None:
        """The --exclude pattern (or overrides-file entry with precision float) that keeps this node float,
        or None. The one exclusion test."""
        for pattern in self.exclude:
            if matches(pattern, node_name, op_type):
                return pattern
        o = self.int8.overrides.for_node(node_name, op_type)
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
        o = self.int8.overrides.for_node(node_name, op_type)
        return o.precision if o else None

    def calib_for(self, tensor: str) -> tuple[CalibMethod, float]:
        """The calibration method and percentile for one activation: its override, or the global ones."""
        o = self.int8.overrides.for_tensor(tensor)
        if o is None:
            return self.w8a8.calibrator, self.w8a8.percentile
        return o.calibrator, self.w8a8.percentile if o.percentile is None else o.percentile

    def ignored_options(self) -> list[str]:
        """Flags set away from their default that the chosen scheme does not read (a silent no-op otherwise)."""
        return [
            f.metadata["flag"]
            for mine, default, f in _unread(self)
            if "flag" in f.metadata and getattr(mine, f.name) != getattr(default, f.name)
        ]

    def unread_warnings(self) -> list[str]:
        """One warning per flag set that nothing reads: the scheme's, or gptq's under another algorithm."""
        scheme, algo = self.scheme.value, self.weight_only.weight_algo.value
        return [f"{flag} does not apply to --scheme {scheme}; ignored" for flag in self.ignored_options()] + [
            f"{flag} only applies to --weight-algo gptq, not {algo}; ignored" for flag in self.unread_by_algo()
        ]

    def unread_by_algo(self) -> list[str]:
        """gptq's own flags set away from their default while another weight algorithm runs (silent otherwise)."""
        w = self.weight_only
        if "weight_only" not in READS[self.scheme] or w.weight_algo == WeightAlgo.GPTQ:
            return []
        return [
            f.metadata["flag"]
            for f in fields(w)
            if f.name.startswith("gptq_") and getattr(w, f.name) != getattr(DEFAULT.weight_only, f.name)
        ]

    def to_dict(self) -> dict:
        """Flat: every option by name (as the report has always shown it), the groups' included."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in GROUPS}
        for g in GROUPS:
            d.update(asdict(getattr(self, g)))
        d = {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}
        d["exclude"] = list(self.exclude)
        d["timing_batches"] = list(self.weight_only.timing_batches)
        d["overrides"] = self.int8.overrides.to_dict() if self.int8.overrides else None
        return {"version": self.VERSION, **d}


DEFAULT = QuantConfig()


def _unread(config: QuantConfig) -> list[tuple[object, object, Field]]:
    """Every option the chosen scheme does not read: (the object holding it, that object's default, its field)."""
    out = [
        (getattr(config, g), getattr(DEFAULT, g), f)
        for g, kind in GROUPS.items()
        if g not in READS[config.scheme]
        for f in fields(kind)
    ]
    ignored = IGNORES.get(config.scheme, ())
    return out + [(config, DEFAULT, f) for f in fields(config) if f.name in ignored]


def effective(config: QuantConfig, decisions: dict[str, dict]) -> dict:
    """The configuration as applied: options the scheme does not read are left out, and choices left to
    qcli (reduce_range: None) are replaced by what was decided (the why is in `decisions`)."""
    d = config.to_dict()
    for _, _, f in _unread(config):
        d.pop(f.name, None)
    for name, decided in decisions.items():
        if name in d:
            d[name] = decided["value"]
    return d


def unmatched_excludes(config: QuantConfig, nodes) -> list[str]:
    """--exclude patterns that match no node (name, op type or glob) of `nodes`."""
    pairs = [(n.name, n.op_type) for n in nodes]
    return [p for p in config.exclude if not any(matches(p, *pair) for pair in pairs)]


def option_fields() -> list[Field]:
    """Every option's field (with its CLI flag in metadata["flag"] where it has one), the groups' included."""
    return [f for f in fields(QuantConfig) if f.name not in GROUPS] + [f for g in GROUPS.values() for f in fields(g)]
