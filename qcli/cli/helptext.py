"""What `--help` says: each command's description and examples, and how its options are grouped
(helpfmt.py draws them; every quantize and compare option sits in a group, tests/cli/test_help.py checks)."""

QUANTIZE_GROUPS = {
    "Data": ["calib", "recipe", "eval_dir", "calib_limit", "skip_bad_files"],
    "Scheme": ["scheme", "per_tensor", "activation_symmetric", "reduce_range", "weight_asymmetric", "allow_quantized"],
    "Calibration (w8a8)": [
        *("calibrator", "percentile", "moving_average", "smooth_quant", "equalize"),
        *("channel_scaling", "bias_correction", "overrides"),
    ],
    "Accuracy": ["guard", "min_sqnr", "max_top1_drop", "min_act_sqnr", "exclude", "strict"],
    "Placement and speed": ["objective", "placement", "min_macs", "timing_batch"],
    "Weight-only (w4a16, w8a16)": [
        *("weight_algo", "block_size", "clip_search", "gptq_damp", "act_order", "weight_format"),
    ],
    "Output": ["output", "dry_run", "json_out", "html", "ort_config", "debug", "help"],
    "Saved plans": ["save_plan", "plan"],
}

QUANTIZE_HELP = """Quantize an FP32 ONNX model; write the model and a report beside it.

**Examples**

    qcli quantize model.onnx --calib data/ -o model.int8.onnx

    qcli quantize model.onnx --calib photos/ --recipe recipe.toml   # raw files

    qcli quantize encoder.onnx --calib sentences.txt   # tokenizer.json beside it

    qcli quantize model.onnx --scheme w4a16 -o model.int4.onnx

    qcli quantize model.onnx --scheme dynamic -o model.dyn.onnx   # no data needed

    qcli quantize model.onnx --calib data/ --dry-run   # print the plan only

    qcli quantize model.onnx --calib data/ --eval eval/ --min-sqnr 30   # a target

    qcli quantize model.onnx --calib data/ --strict   # CI: exit 1 if too lossy

    qcli quantize model.onnx --calib data/ --calibrator minmax   # default: auto

    qcli quantize encoder.onnx --calib data/ --smooth-quant 0.5

    qcli quantize detector.onnx --calib data/ --equalize

    qcli quantize model.onnx --calib data/ --overrides overrides.toml

    qcli quantize model.onnx --calib data/ --save-plan plan.json   # review it

    qcli quantize model.onnx --plan plan.json   # CI: the same model, no data
"""

COMPARE_GROUPS = {
    "Data": ["data", "recipe", "skip_bad_files"],
    "Gates (exit 1 when one fails)": ["min_sqnr", "max_top1_drop", "max_accuracy_drop"],
    "Measurement": ["runs", "per_layer", "top", "ort_config"],
    "Output": ["json_out", "html", "debug", "help"],
}

COMPARE_HELP = """Compare a quantized model with its reference: fidelity, latency, size; gate for CI.

**Examples**

    qcli compare model.onnx model.int8.onnx --data eval/

    qcli compare model.onnx model.int8.onnx --data eval/ --min-sqnr 25 --json

    qcli compare model.onnx model.int8.onnx --data val/ --recipe recipe.toml \\
        --max-accuracy-drop 1     # val/<class>/*.jpg: top-1 against the labels

    qcli compare model.onnx other.int8.onnx --data eval/ --per-layer
"""

INSPECT_HELP = """What a model is and what qcli would quantize in it, before any data.

**Examples**

    qcli inspect model.onnx

    qcli inspect model.onnx --scheme w4a16 --json

    qcli inspect model.onnx --exclude '/head/*'
"""

RECIPE_HELP = """Print a starting data recipe for a model: its inputs, shapes and dtypes, what was found beside it
(tokenizer.json, preprocessor_config.json), and a line to set for what could not be inferred.

**Examples**

    qcli recipe model.onnx > recipe.toml

    qcli quantize model.onnx --calib photos/ --recipe recipe.toml
"""

REPORT_HELP = """Draw a saved JSON report again: as a self-contained HTML page (CI can archive the JSON and draw later).

**Examples**

    qcli report model.int8.onnx.report.json --html model.int8.onnx.report.html

    qcli compare model.onnx model.int8.onnx --data eval/ --json > cmp.json
    qcli report cmp.json --html cmp.html
"""
