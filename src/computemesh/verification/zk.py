"""Zero-knowledge proofs of ONNX inference with ezkl: the ``zk`` verification policy.

Needs the optional extra ``computemesh[zk]`` (ezkl); ezkl is imported only when a proof is
made or checked, and ``load_ezkl`` raises ``SpecError`` ("zk_unavailable") without it.

A circuit is a function of the model and the shapes fed to it, never of the input values,
so the provider and the consumer build the same one independently: settings from
``gen_settings`` with fixed scales (``SCALE``: values are fixed point with 13 fractional
bits), inputs and outputs public and parameters fixed, calibrated on a fixed-seed sample
for the rows and lookups it needs, then compiled. Everything is cached under
``<root>/<model sha256>/<shape digest>/``: ``settings.json``, ``model.compiled``,
``vk.key`` and, on a provider, ``pk.key``. Keys are set up once per circuit; a second
``setup`` finds the files and returns.

The KZG structured reference string is shared by provider and consumer: one file per size,
``<srs dir>/kzg<logrows>.srs`` (``$CMESH_ZK_SRS_DIR``, default
``~/.cache/computemesh/zk-srs``), loaded when present, else made with ``ezkl.gen_srs``
under a file lock. A locally made string suits a local network only (whoever makes it
could forge proofs); a public network installs the ceremony's files in that directory.

Bounds (``ZkRefused``): a model of at most ``MAX_MODEL_BYTES`` and ``MAX_PARAMETERS``
parameters whose circuit fits in ``2 ** MAX_LOGROWS`` rows. Past them setup and proving
cost minutes and gigabytes (the proving key of a 4-8-2 MLP at 2^15 rows is already about
270 MB), so the policy is refused with the reason.

The proof file (``PROOF_OUTPUT``, an output of the signed result) is
``{"format", "model_sha256", "circuit", "srs_sha256", "proof"}``, ``proof`` being ezkl's
proof with its public instances: the quantised inputs, then the quantised outputs. The
consumer (``check_result_proof``) verifies it with its own key, then binds it: the proven
inputs are the job's (within one quantisation step) and each output tensor the result
declares is within ``QUANTIZATION_STEPS`` steps of the proven one (or the job's tolerance,
when larger), so a tampered output fails.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import importlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from computemesh.executor.onnx_call import (
    bind_feeds,
    describe_tensor_file,
    model_path,
    output_file_name,
)
from computemesh.executor.onnx_signature import ModelSignature, ValueSpec
from computemesh.models.errors import MeshError, SpecError
from computemesh.models.job import ZK_PROOF_OUTPUT, JobSpec, Tolerance
from computemesh.models.market import JobResult, OutputFile
from computemesh.verification.policy import ProofCheck

PROOF_OUTPUT = ZK_PROOF_OUTPUT
PROOF_FORMAT = "computemesh-zk-proof/1"
MAX_LOGROWS = 17
MAX_PARAMETERS = 65_536
MAX_MODEL_BYTES = 4 * 1024 * 1024
MAX_PROOF_BYTES = 512 * 1024
SCALE = 13
QUANTIZATION_STEPS = 16
CALIBRATION_RANGE = 4.0
ENV_SRS_DIR = "CMESH_ZK_SRS_DIR"
DEFAULT_SRS_DIR = Path("~/.cache/computemesh/zk-srs")
INSTALL_HINT = "install the zk extra: pip install 'computemesh[zk]'"


class ZkRefused(SpecError):
    """A model the zk policy does not prove (too large, or no circuit can be built)."""

    default_code = "zk_refused"


class ProofRefuted(MeshError):
    """A proof that does not verify or does not bind the result: evidence of fraud."""

    default_code = "proof_refuted"


class ProofUnchecked(MeshError):
    """A proof that cannot be checked here (another circuit or reference string)."""

    default_code = "proof_unchecked"


def load_ezkl() -> Any:
    """The ezkl module; ``SpecError`` (zk_unavailable) when the extra is not installed."""
    try:
        return importlib.import_module("ezkl")
    except ImportError as exc:
        raise SpecError(
            f"the zk policy needs ezkl, which is not installed ({exc})",
            code="zk_unavailable",
            hint=INSTALL_HINT,
        ) from exc


def zk_available() -> bool:
    try:
        load_ezkl()
    except SpecError:
        return False
    return True


def wants_proof(spec: JobSpec) -> bool:
    return spec.verification is not None and "zk" in spec.verification.policies


def default_srs_dir() -> Path:
    return Path(os.environ.get(ENV_SRS_DIR) or DEFAULT_SRS_DIR).expanduser().absolute()


# The job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZkJob:
    """A model and the tensors fed to it, in the model's input order."""

    model: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    feeds: tuple[np.ndarray, ...]
    variables: tuple[tuple[str, int], ...]

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    @property
    def shape_digest(self) -> str:
        """What, besides the model, fixes the circuit: fed shapes, scale, ezkl version."""
        shapes = [list(feed.shape) for feed in self.feeds]
        data = json.dumps([shapes, list(self.variables), SCALE, _ezkl_version()])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def input_data(self) -> dict[str, Any]:
        return {"input_data": [feed.astype(np.float64).ravel().tolist() for feed in self.feeds]}


def zk_job_of(spec: JobSpec) -> ZkJob:
    """The model and feeds of an ``onnx`` job; ``ZkRefused`` when the model is too large."""
    files = {item.path: item.inline_bytes() or b"" for item in spec.inputs}
    model = files.get(model_path(spec.command))
    if model is None:
        raise SpecError("the model is not among the job's inputs", code="invalid_command")
    if len(model) > MAX_MODEL_BYTES:
        raise ZkRefused(f"the model is {len(model)} bytes; zk proves at most {MAX_MODEL_BYTES}")
    graph = _graph(model)
    weights = {item.name for item in graph.initializer}
    parameters = sum(math.prod(item.dims) for item in graph.initializer)
    if parameters > MAX_PARAMETERS:
        raise ZkRefused(
            f"the model has {parameters} parameters; zk proves at most {MAX_PARAMETERS}",
            hint="use redundant, adaptive or audit verification for larger models",
        )
    declared = [value for value in graph.input if value.name not in weights]
    signature = ModelSignature(
        inputs=tuple(ValueSpec(value.name, "tensor", None, None) for value in declared),
        outputs=tuple(ValueSpec(value.name, "tensor", None, None) for value in graph.output),
    )
    bound = bind_feeds(spec.command, signature)
    feeds = tuple(_tensor(bound[value.name], files.get(bound[value.name])) for value in declared)
    return ZkJob(
        model=model,
        inputs=tuple(value.name for value in declared),
        outputs=tuple(value.name for value in graph.output),
        feeds=feeds,
        variables=_variables(declared, feeds),
    )


def _graph(model: bytes) -> Any:
    import onnx

    try:
        return onnx.load_model_from_string(model).graph
    except Exception as exc:  # the parser raises several unrelated types
        raise SpecError(f"the model is not valid ONNX: {exc}", code="invalid_model") from exc


def _tensor(path: str, data: bytes | None) -> np.ndarray:
    if data is None:
        raise SpecError(f"{path} is not among the job's inputs", code="invalid_command")
    try:
        describe_tensor_file(path, data)
        value = (
            np.load(io.BytesIO(data), allow_pickle=False)
            if path.endswith(".npy")
            else np.asarray(json.loads(data))
        )
    except ValueError as exc:
        raise SpecError(f"{path}: {exc}", code="invalid_input") from exc
    return np.asarray(value, dtype=np.float64)


def _variables(declared: Sequence[Any], feeds: Sequence[np.ndarray]) -> tuple[tuple[str, int], ...]:
    """Each named (symbolic) dimension of the model's inputs, bound to the fed size."""
    bound: dict[str, int] = {}
    for value, feed in zip(declared, feeds, strict=True):
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.dim_param or axis >= feed.ndim:
                continue
            if bound.setdefault(dim.dim_param, int(feed.shape[axis])) != feed.shape[axis]:
                raise SpecError(f"dimension {dim.dim_param} is fed two sizes")
    return tuple(sorted(bound.items()))


# Circuits and keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """One compiled circuit's files and the settings they were made with."""

    directory: Path
    settings: Mapping[str, Any]

    @property
    def settings_path(self) -> Path:
        return self.directory / "settings.json"

    @property
    def compiled_path(self) -> Path:
        return self.directory / "model.compiled"

    @property
    def vk_path(self) -> Path:
        return self.directory / "vk.key"

    @property
    def pk_path(self) -> Path:
        return self.directory / "pk.key"

    @property
    def logrows(self) -> int:
        return int(self.settings["run_args"]["logrows"])

    @property
    def digest(self) -> str:
        """The settings' sha256, their creation time left out: equal for equal circuits."""
        stable = {key: value for key, value in self.settings.items() if key != "timestamp"}
        return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


class ZkKeys:
    """Circuits, keys and proofs under ``root`` (see the module docstring); not thread-safe
    across instances sharing a root, except for the reference strings, which are locked."""

    def __init__(self, root: Path, *, srs_dir: Path | None = None) -> None:
        self.root = root
        self.srs_dir = srs_dir or default_srs_dir()
        self._srs_digests: dict[Path, str] = {}

    def circuit(self, job: ZkJob) -> Circuit:
        """The job's circuit, built and compiled once; ``ZkRefused`` past the bounds."""
        directory = self.root / job.model_sha256 / job.shape_digest
        settings_path = directory / "settings.json"
        if not (directory / "model.compiled").exists():
            self._build(job, directory)
        return Circuit(directory, json.loads(settings_path.read_text()))

    def setup(self, circuit: Circuit, *, proving: bool) -> None:
        """Make the circuit's verification key, and its proving key when ``proving``."""
        if circuit.vk_path.exists() and (circuit.pk_path.exists() or not proving):
            return
        ezkl = load_ezkl()
        srs = self.srs(circuit.logrows)
        with _scratch(circuit.directory) as scratch:
            vk, pk = scratch / "vk.key", scratch / "pk.key"
            _call(ezkl.setup, str(circuit.compiled_path), str(vk), str(pk), srs_path=str(srs))
            if proving:
                pk.replace(circuit.pk_path)
            vk.replace(circuit.vk_path)

    def srs(self, logrows: int) -> Path:
        """The reference string for ``2 ** logrows`` rows: loaded, else made once (locked)."""
        path = self.srs_dir / f"kzg{logrows}.srs"
        if path.exists():
            return path
        self.srs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.srs_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                with _scratch(self.srs_dir) as scratch:
                    _call(load_ezkl().gen_srs, str(scratch / path.name), logrows)
                    (scratch / path.name).replace(path)
        return path

    def srs_digest(self, logrows: int) -> str:
        path = self.srs(logrows)
        if path not in self._srs_digests:
            self._srs_digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._srs_digests[path]

    def prove(self, job: ZkJob) -> bytes:
        """The proof file of running ``job``'s model on its feeds (keys made if needed)."""
        ezkl = load_ezkl()
        circuit = self.circuit(job)
        self.setup(circuit, proving=True)
        srs = str(self.srs(circuit.logrows))
        with _scratch(circuit.directory) as scratch:
            (scratch / "input.json").write_text(json.dumps(job.input_data()))
            witness, proof = scratch / "witness.json", scratch / "proof.json"
            compiled = str(circuit.compiled_path)
            _call(ezkl.gen_witness, str(scratch / "input.json"), compiled, str(witness))
            _call(ezkl.prove, str(witness), compiled, str(circuit.pk_path), str(proof), srs)
            document = json.loads(proof.read_text())
        envelope = {
            "format": PROOF_FORMAT,
            "model_sha256": job.model_sha256,
            "circuit": circuit.digest,
            "srs_sha256": self.srs_digest(circuit.logrows),
            "proof": document,
        }
        return json.dumps(envelope, sort_keys=True).encode()

    def verify(
        self,
        proof: bytes,
        job: ZkJob,
        outputs: Mapping[str, np.ndarray],
        tolerance: Tolerance | None = None,
    ) -> None:
        """Accept ``proof`` for ``job`` with these output tensors (by model output name).

        Raises ``ProofRefuted`` when the proof is malformed, does not verify, or proves
        other inputs or outputs; ``ProofUnchecked`` when it names another circuit or
        reference string than this side's.
        """
        circuit = self.circuit(job)
        self.setup(circuit, proving=False)
        inner = _proof_document(proof, job, circuit, self.srs_digest(circuit.logrows))
        verify_proof(inner, circuit, self.srs(circuit.logrows))
        _check_bindings(inner, job, circuit, outputs, tolerance or Tolerance())

    def _build(self, job: ZkJob, directory: Path) -> None:
        """Settings and compiled circuit, made aside and moved into place whole."""
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".work-"))
        try:
            _make_circuit(job, scratch)
            try:
                scratch.rename(directory)
            except OSError:
                if not (directory / "model.compiled").exists():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _make_circuit(job: ZkJob, into: Path) -> None:
    """``settings.json`` and ``model.compiled`` for ``job`` in ``into``; ``ZkRefused`` when
    no circuit within the bounds exists."""
    ezkl = load_ezkl()
    model, settings = into / "model.onnx", into / "settings.json"
    calibration = into / "calibration.json"
    model.write_bytes(job.model)
    calibration.write_text(json.dumps(_calibration_data(job)))
    run_args = ezkl.PyRunArgs()
    run_args.input_scale = run_args.param_scale = SCALE
    run_args.input_visibility = run_args.output_visibility = "public"
    run_args.param_visibility = "fixed"
    if job.variables:
        run_args.variables = list(job.variables)
    try:
        ezkl.gen_settings(str(model), str(settings), py_run_args=run_args)
        ezkl.calibrate_settings(
            str(calibration),
            str(model),
            str(settings),
            "resources",
            scales=[SCALE],
            max_logrows=MAX_LOGROWS,
        )
    except Exception as exc:  # ezkl reports every failure as RuntimeError
        raise ZkRefused(f"no circuit within 2^{MAX_LOGROWS} rows for this model: {exc}") from exc
    settings.write_text(json.dumps(_canonical(json.loads(settings.read_text()))))
    _check_size(json.loads(settings.read_text()))
    _call(ezkl.compile_circuit, str(model), str(into / "model.compiled"), str(settings))
    model.unlink()
    calibration.unlink()


def verify_proof(proof: Mapping[str, Any], circuit: Circuit, srs: Path) -> None:
    """ezkl's verification of ``proof`` with the circuit's verification key."""
    ezkl = load_ezkl()
    with _scratch(circuit.directory) as scratch:
        path = scratch / "proof.json"
        path.write_text(json.dumps(proof))
        try:
            valid = ezkl.verify(
                str(path), str(circuit.settings_path), str(circuit.vk_path), srs_path=str(srs)
            )
        except Exception as exc:
            raise ProofRefuted(f"the proof does not verify: {_short(exc)}") from exc
    if valid is not True:
        raise ProofRefuted("the proof does not verify")


def _canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as every machine writes them: ezkl lists the range checks and lookups a
    circuit needs in hash-set order, which changes the circuit's columns and so its keys."""
    for key in ("required_range_checks", "required_lookups"):
        if isinstance(settings.get(key), list):
            settings[key] = sorted(settings[key], key=json.dumps)
    settings["timestamp"] = 0
    return settings


def _check_size(settings: Mapping[str, Any]) -> None:
    logrows = int(settings["run_args"]["logrows"])
    rows = int(settings.get("num_rows", 0))
    if logrows > MAX_LOGROWS or rows >= 2**MAX_LOGROWS:
        raise ZkRefused(
            f"the circuit needs 2^{logrows} rows ({rows} used); zk proves at most 2^{MAX_LOGROWS}",
            hint="use redundant, adaptive or audit verification for larger models",
        )


def _calibration_data(job: ZkJob) -> dict[str, Any]:
    """A fixed-seed sample of the fed shapes: the same circuit on every machine."""
    rng = np.random.default_rng(0)
    sample = [
        rng.uniform(-CALIBRATION_RANGE, CALIBRATION_RANGE, feed.size).tolist() for feed in job.feeds
    ]
    return {"input_data": sample}


def _ezkl_version() -> str:
    return str(getattr(load_ezkl(), "__version__", "unknown"))


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".work-") as name:
        yield Path(name)


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """An ezkl step; its RuntimeError as a ``MeshError`` naming the step."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        raise MeshError(
            f"ezkl {function.__name__} failed: {_short(exc)}", code="zk_failed"
        ) from exc


def _short(exc: BaseException) -> str:
    return str(exc)[:500]


# Checking a proof -----------------------------------------------------------------------


def _proof_document(proof: bytes, job: ZkJob, circuit: Circuit, srs: str) -> dict[str, Any]:
    if len(proof) > MAX_PROOF_BYTES:
        raise ProofRefuted(f"the proof file is larger than {MAX_PROOF_BYTES} bytes")
    try:
        envelope = json.loads(proof)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProofRefuted(f"the proof file is not JSON: {_short(exc)}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != PROOF_FORMAT:
        raise ProofRefuted(f"the proof file is not a {PROOF_FORMAT} document")
    if envelope.get("model_sha256") != job.model_sha256:
        raise ProofRefuted("the proof is of another model")
    if envelope.get("circuit") != circuit.digest:
        raise ProofUnchecked("the proof was made for other circuit settings")
    if envelope.get("srs_sha256") != srs:
        raise ProofUnchecked("the proof was made with another reference string")
    inner = envelope.get("proof")
    if not isinstance(inner, dict):
        raise ProofRefuted("the proof file holds no proof")
    return inner


def _check_bindings(
    proof: Mapping[str, Any],
    job: ZkJob,
    circuit: Circuit,
    outputs: Mapping[str, np.ndarray],
    tolerance: Tolerance,
) -> None:
    """The proven inputs are the job's; each declared output is the proven one."""
    values = _public_values(proof, circuit)
    proven_inputs, proven_outputs = values[: len(job.inputs)], values[len(job.inputs) :]
    input_step = 2.0 ** -_scales(circuit, "model_input_scales")[0]
    for name, feed, proven in zip(job.inputs, job.feeds, proven_inputs, strict=True):
        if proven.size != feed.size or not np.allclose(
            proven, feed.ravel(), rtol=0.0, atol=input_step
        ):
            raise ProofRefuted(f"the proof is of other inputs than the job's {name!r}")
    scales = _scales(circuit, "model_output_scales")
    for name, scale, proven in zip(job.outputs, scales, proven_outputs, strict=True):
        declared = outputs.get(name)
        if declared is None:
            continue
        bound = QUANTIZATION_STEPS * 2.0**-scale
        if declared.size != proven.size or not np.allclose(
            declared.astype(np.float64).ravel(),
            proven,
            rtol=max(bound, tolerance.rel),
            atol=max(bound, tolerance.abs),
        ):
            raise ProofRefuted(f"output {name!r} is not the output the proof proves")


def _public_values(proof: Mapping[str, Any], circuit: Circuit) -> list[np.ndarray]:
    """The proof's public instances as floats, one array per model input and output."""
    ezkl = load_ezkl()
    shapes = [math.prod(shape) for shape in circuit.settings["model_instance_shapes"]]
    scales = [
        *_scales(circuit, "model_input_scales"),
        *_scales(circuit, "model_output_scales"),
    ]
    instances = proof.get("instances")
    if not isinstance(instances, list) or len(instances) != 1:
        raise ProofRefuted("the proof's public instances are malformed")
    flat = instances[0]
    if not isinstance(flat, list) or len(flat) != sum(shapes) or len(shapes) != len(scales):
        raise ProofRefuted("the proof has the wrong number of public values")
    values, start = [], 0
    for size, scale in zip(shapes, scales, strict=True):
        try:
            chunk = [float(ezkl.felt_to_float(felt, scale)) for felt in flat[start : start + size]]
        except Exception as exc:
            raise ProofRefuted(f"the proof's public values are malformed: {_short(exc)}") from exc
        values.append(np.asarray(chunk, dtype=np.float64))
        start += size
    return values


def _scales(circuit: Circuit, key: str) -> list[int]:
    return [int(scale) for scale in circuit.settings[key]]


# Results --------------------------------------------------------------------------------


def attach_proof(keys: ZkKeys, spec: JobSpec, result: JobResult) -> JobResult:
    """``result`` with the proof of its inference as the output ``PROOF_OUTPUT``."""
    proof = keys.prove(zk_job_of(spec))
    output = OutputFile(
        path=PROOF_OUTPUT,
        sha256=hashlib.sha256(proof).hexdigest(),
        size=len(proof),
        content_b64=base64.b64encode(proof).decode("ascii"),
    )
    kept = [item for item in result.outputs if item.path != PROOF_OUTPUT]
    return result.model_copy(update={"outputs": [*kept, output]})


def without_proof(result: JobResult) -> JobResult:
    """``result`` less its proof: what replicas are compared on (proofs are randomised)."""
    kept = [item for item in result.outputs if item.path != PROOF_OUTPUT]
    return result.model_copy(update={"outputs": kept})


def check_result_proof(keys: ZkKeys, spec: JobSpec, result: JobResult) -> ProofCheck:
    """Whether ``result`` carries a proof that verifies and binds its declared outputs."""
    if result.exit_code is None or result.status != "completed":
        return ProofCheck("unproven", f"the run {result.status}: nothing to prove")
    files = {item.path: item.content_b64 for item in result.outputs}
    if PROOF_OUTPUT not in files:
        return ProofCheck("unproven", "the result carries no proof")
    job = zk_job_of(spec)
    try:
        proof = _decoded(files[PROOF_OUTPUT], PROOF_OUTPUT)
        outputs = {
            name: _output_tensor(files, output_file_name(name))
            for name in job.outputs
            if output_file_name(name) in spec.outputs
        }
        tolerance = spec.verification.tolerance if spec.verification else None
        keys.verify(proof, job, outputs, tolerance)
    except ProofRefuted as exc:
        return ProofCheck("refuted", exc.message)
    except ProofUnchecked as exc:
        return ProofCheck("unproven", exc.message)
    return ProofCheck("proven", "the proof verifies and binds the outputs")


def _output_tensor(files: Mapping[str, str | None], path: str) -> np.ndarray:
    if path not in files:
        raise ProofRefuted(f"the result lacks the output {path}")
    data = _decoded(files[path], path)
    try:
        value = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ProofRefuted(f"output {path} is not a tensor: {_short(exc)}") from exc
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
        raise ProofRefuted(f"output {path} is not a numeric tensor")
    return value


def _decoded(content_b64: str | None, path: str) -> bytes:
    if content_b64 is None:
        raise ProofUnchecked(f"{path} was not sent inline")
    try:
        return base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofRefuted(f"{path} is not valid base64") from exc
