"""SpeechBrain's published speaker encoders (e.g. speechbrain/spkrec-ecapa-voxceleb), read into spkid.

The layout is a folder as SpeechBrain publishes it: `hyperparams.yaml` (HyperPyYAML) and `embedding_model.ckpt`
(`torch.save` of the ECAPA-TDNN's state dict), usually with `mean_var_norm_emb.ckpt`, `classifier.ckpt` and
`label_encoder.txt`. The hyperparameters are read as data (`spkid.importers._yaml`: the `!new:` tags are recorded,
nothing is imported or run) and must describe:
- `embedding_model`: `speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN`; its keywords become those of spkid's
  `sb_ecapa` network (`input_size` -> `feat_dim`, `lin_neurons` -> `embed_dim`, the others by name);
- `compute_features`: `speechbrain.lobes.features.Fbank` (no deltas, no context, triangular filters); its
  keywords become an `SbFbankConfig` (`spkid.sbfbank`);
- `mean_var_norm`: `speechbrain.processing.features.InputNormalization` with `norm_type: sentence` (its
  `std_norm: False` is "cmn", True "cmvn").

spkid's embedding is what SpeechBrain's `EncoderClassifier.encode_batch(wav)` returns by default: Fbank, the
sentence normalisation and the network over the whole utterance, with all frames counted (relative length 1), and
*not* `mean_var_norm_emb` (encode_batch applies it only with `normalize=True`), so `mean_var_norm_emb.ckpt`,
`classifier.ckpt` and `label_encoder.txt` are not read. The embedding is the raw 192-d vector (not
length-normalised); spkid's cosine scoring normalises it, as SpeechBrain's `SpeakerRecognition.verify_batch` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spkid.errors import SpkidError
from spkid.importers import Imported, read_weights, tensors
from spkid.importers._yaml import Tagged, read_yaml

FAMILY = "SpeechBrain"
EXPECTS = "a folder with hyperparams.yaml and embedding_model.ckpt (ECAPA-TDNN, e.g. spkrec-ecapa-voxceleb)"
HYPERPARAMS = "hyperparams.yaml"
WEIGHTS = "embedding_model.ckpt"
OPTIONAL = ("mean_var_norm_emb.ckpt", "classifier.ckpt", "label_encoder.txt")

ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
FBANK = "speechbrain.lobes.features.Fbank"
INPUT_NORM = "speechbrain.processing.features.InputNormalization"
# ECAPA_TDNN keyword -> sb_ecapa keyword; `device` and `dropout` (training only) are accepted and not used
ECAPA_KEYWORDS = {"input_size": "feat_dim", "lin_neurons": "embed_dim", "channels": "channels",
                  "kernel_sizes": "kernel_sizes", "dilations": "dilations", "attention_channels": "attention_channels",
                  "res2net_scale": "res2net_scale", "se_channels": "se_channels", "global_context": "global_context",
                  "groups": "groups"}
ECAPA_IGNORED = {"device", "dropout"}
RELU = "torch.nn.ReLU"
# Fbank keyword -> SbFbankConfig field, with the conversion of its unit (SpeechBrain gives windows in ms)
FBANK_KEYWORDS = {"sample_rate": "sample_rate", "n_mels": "n_filters", "n_fft": "nfft", "f_min": "low_freq",
                  "f_max": "high_freq", "win_length": "win_len", "hop_length": "win_step"}
FBANK_MS = {"win_length", "hop_length"}
# Fbank keywords that change nothing at inference when they have these values (SpeechBrain's defaults)
FBANK_FIXED = {"deltas": False, "context": False, "filter_shape": "triangular", "left_frames": None,
               "right_frames": None, "param_rand_factor": None, "requires_grad": False, "param_change_factor": None}


def matches(path: Path) -> bool:
    """A folder holding `hyperparams.yaml` (SpeechBrain's name for its HyperPyYAML configuration)."""
    return path.is_dir() and (path / HYPERPARAMS).is_file()


def load(path: Path) -> Imported:
    """The ECAPA-TDNN of SpeechBrain's model folder `path` (module docstring); one-line SpkidError otherwise."""
    from spkid.modelfile import ModelSpec
    from spkid.models.sb_ecapa import SBECAPATDNN

    hp_path, weights_path = path / HYPERPARAMS, path / WEIGHTS
    if not weights_path.is_file():
        raise SpkidError(f"{path}: a SpeechBrain folder needs {WEIGHTS} beside {HYPERPARAMS}; it is missing")
    hp = read_yaml(hp_path)
    kwargs = network_kwargs(hp, hp_path)
    front = front_end(hp, hp_path)
    if front.n_filters != kwargs["feat_dim"]:
        raise SpkidError(f"{hp_path}: compute_features gives {front.n_filters} Mel bands, but embedding_model "
                         f"takes input_size {kwargs['feat_dim']}")
    try:
        net = SBECAPATDNN(**kwargs)
    except (TypeError, ValueError) as e:
        raise SpkidError(f"{hp_path}: embedding_model: {e}") from None
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in tensors(read_weights(weights_path), weights_path).items()}
    expected = net.state_dict()
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or extra or wrong:
        shown = "; ".join(f"{what} {len(keys)} (e.g. {keys[0]})" for what, keys in
                          (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)
        raise SpkidError(f"{weights_path}: weights do not fit the ECAPA-TDNN of {HYPERPARAMS} ({shown})")
    present = [name for name in OPTIONAL if (path / name).is_file()]
    n_params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    spec = ModelSpec(
        model={"name": "sb_ecapa", "kwargs": kwargs},
        features=front.to_dict(),
        embedding={"window_s": 0.0, "hop_s": 1.5, "min_s": 0.5},
        training={"source": f"SpeechBrain {HYPERPARAMS} + {WEIGHTS}", "family": FAMILY,
                  "embedding_model": ECAPA, "compute_features": FBANK,
                  "mean_var_norm": f"{INPUT_NORM} (sentence, {front.norm})",
                  "not_read": present,
                  "embedding_normalisation": "none (EncoderClassifier.encode_batch's default normalize=False: "
                                             "mean_var_norm_emb is not applied)"},
    )
    description = (f"ECAPA-TDNN, channels {kwargs['channels']}, {kwargs['embed_dim']}-d embedding, "
                   f"{n_params / 1e6:.1f} M parameters, {front.n_filters} Mel bands ({front.kind})")
    return Imported(FAMILY, description, spec, state)


def _node(hp: dict[str, Any], key: str, target: str, source: Path) -> dict[str, Any]:
    """The keywords of `hp[key]`, which must be `!new:target`."""
    node = hp.get(key)
    if node is None:
        raise SpkidError(f"{source}: no {key!r}; spkid reads SpeechBrain speaker encoders with {key}: !new:{target}")
    if not isinstance(node, Tagged) or node.target != target:
        shown = node.tag if isinstance(node, Tagged) else type(node).__name__
        raise SpkidError(f"{source}: {key} is {shown}; spkid reads SpeechBrain's ECAPA-TDNN models, with {key}: "
                         f"!new:{target}")
    if node.value in (None, ""):
        return {}
    if not isinstance(node.value, dict):
        raise SpkidError(f"{source}: {key}: expected keyword arguments, got {type(node.value).__name__}")
    return node.value


def network_kwargs(hp: dict[str, Any], source: Path) -> dict[str, Any]:
    """`sb_ecapa`'s keywords from `embedding_model` (an ECAPA_TDNN) of the hyperparameters `hp`."""
    raw = _node(hp, "embedding_model", ECAPA, source)
    if unknown := raw.keys() - ECAPA_KEYWORDS.keys() - ECAPA_IGNORED - {"activation"}:
        raise SpkidError(f"{source}: embedding_model: unknown ECAPA_TDNN keywords {sorted(unknown)}")
    activation = raw.get("activation")
    if activation is not None and not (isinstance(activation, Tagged) and activation.target == RELU):
        shown = activation.tag if isinstance(activation, Tagged) else repr(activation)
        raise SpkidError(f"{source}: embedding_model: activation {shown}; spkid's ECAPA-TDNN has ReLU ({RELU})")
    if "input_size" not in raw:
        raise SpkidError(f"{source}: embedding_model: no input_size")
    out: dict[str, Any] = {}
    for name, mine in ECAPA_KEYWORDS.items():
        if name not in raw:
            continue
        value = raw[name]
        if name == "global_context":
            ok = isinstance(value, bool)
        elif name in ("channels", "kernel_sizes", "dilations", "groups"):
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                 for v in value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            raise SpkidError(f"{source}: embedding_model: {name} = {value!r} is not what ECAPA_TDNN takes")
        out[mine] = value
    defaults = {"embed_dim": 192, "channels": [512, 512, 512, 512, 1536], "kernel_sizes": [5, 3, 3, 3, 1],
                "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "res2net_scale": 8, "se_channels": 128,
                "global_context": True, "groups": [1, 1, 1, 1, 1]}  # ECAPA_TDNN's own, where the file gives none
    return {**defaults, **out}


def front_end(hp: dict[str, Any], source: Path) -> Any:
    """The `SbFbankConfig` of `compute_features` (a Fbank) and `mean_var_norm` (a sentence InputNormalization)."""
    from spkid.sbfbank import SbFbankConfig

    raw = _node(hp, "compute_features", FBANK, source)
    if unknown := raw.keys() - FBANK_KEYWORDS.keys() - FBANK_FIXED.keys():
        raise SpkidError(f"{source}: compute_features: unknown Fbank keywords {sorted(unknown)}")
    for name, fixed in FBANK_FIXED.items():
        if fixed is not None and name in raw and raw[name] != fixed:
            raise SpkidError(f"{source}: compute_features: {name} = {raw[name]!r}; spkid computes SpeechBrain's "
                             f"Fbank with {name} = {fixed!r} only")
    fields: dict[str, Any] = {}
    for name, mine in FBANK_KEYWORDS.items():
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpkidError(f"{source}: compute_features: {name} = {value!r} is not a number")
        fields[mine] = value / 1000.0 if name in FBANK_MS else value
    fields["norm"] = _sentence_norm(hp, source)
    try:
        return SbFbankConfig(**fields)
    except SpkidError as e:
        raise SpkidError(f"{source}: compute_features: {e}") from None


def _sentence_norm(hp: dict[str, Any], source: Path) -> str:
    raw = _node(hp, "mean_var_norm", INPUT_NORM, source)
    norm_type = raw.get("norm_type", "global")
    if norm_type != "sentence":
        raise SpkidError(f"{source}: mean_var_norm has norm_type {norm_type!r}; spkid reads SpeechBrain speaker "
                         "encoders that normalise each utterance (norm_type: sentence)")
    if raw.get("mean_norm", True) is not True:
        raise SpkidError(f"{source}: mean_var_norm: mean_norm must be True")
    std_norm = raw.get("std_norm", True)
    if not isinstance(std_norm, bool):
        raise SpkidError(f"{source}: mean_var_norm: std_norm = {std_norm!r} is not true or false")
    return "cmvn" if std_norm else "cmn"
