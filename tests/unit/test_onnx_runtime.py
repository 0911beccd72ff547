"""The python runtime: what it binds, what a node advertises, and the jobs it refuses."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from computemesh.actor import Actor
from computemesh.app import provider as provider_app
from computemesh.executor import ProcessExecutor, ReadOnlyBind
from computemesh.executor.onnx import OnnxExecutor, python_runtime_for_onnx
from computemesh.executor.python_runtime import (
    RUNTIME_SITE_DIR,
    PythonRuntime,
    package_closure,
    parse_offer,
    resolve_python_runtime,
)
from computemesh.executor.sandbox import (
    HostLayout,
    SandboxConfig,
    build_bwrap_argv,
    check_read_only_bind,
)
from computemesh.identity import Identity
from computemesh.models.errors import ExecutionError
from computemesh.models.job import JobSpec, RuntimeSpec
from computemesh.models.market import Hardware
from computemesh.node.provider import ProviderNode
from computemesh.node.runtimes import offered_runtimes, runtime_refusals, unmet_runtime
from computemesh.node.settings import NodeSettings
from computemesh.store import AllocationRepository, open_database
from computemesh.transport import MemoryHub, MemoryTransport
from tests.fakes import FakeExecutor

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
LABELS = ("python3.11", "python3.11/numpy==2.4.6", "python3.11/onnxruntime==1.31.1")


@pytest.fixture(scope="module")
def runtime() -> PythonRuntime:
    return python_runtime_for_onnx(switch_uid=False)


# Resolving the runtime ----------------------------------------------------------------------


def test_the_onnx_runtime_holds_its_packages_and_their_requirements_only(
    runtime: PythonRuntime,
) -> None:
    names = {package.name for package in runtime.packages}
    assert {"numpy", "onnxruntime", "onnx", "protobuf"} <= names
    assert not names & {"pydantic", "computemesh", "pytest", "sqlalchemy", "typer"}
    assert runtime.version == VERSION
    assert os.access(runtime.interpreter, os.X_OK)


def test_package_entries_are_bound_read_only_under_the_runtime_dir(
    runtime: PythonRuntime,
) -> None:
    package_binds = runtime.binds()[len(runtime.interpreter_binds) :]
    destinations = {bind.destination for bind in package_binds}
    for bind in package_binds:
        check_read_only_bind(bind)
        assert bind.destination.startswith(RUNTIME_SITE_DIR + "/")
        assert os.path.lexists(bind.source)
    assert f"{RUNTIME_SITE_DIR}/numpy" in destinations
    assert f"{RUNTIME_SITE_DIR}/onnxruntime" in destinations
    assert f"{RUNTIME_SITE_DIR}/google/protobuf" in destinations
    assert f"{RUNTIME_SITE_DIR}/google" not in destinations
    assert any(d.endswith(".dist-info") for d in destinations)
    assert not any("pydantic" in d for d in destinations)


def test_import_paths_in_and_out_of_the_sandbox(runtime: PythonRuntime) -> None:
    assert runtime.import_paths(sandboxed=True) == (RUNTIME_SITE_DIR,)
    for path in runtime.import_paths(sandboxed=False):
        assert (Path(path) / "numpy").is_dir()


def test_a_missing_package_means_no_runtime() -> None:
    with pytest.raises(ExecutionError) as caught:
        resolve_python_runtime(["numpy", "no-such-package-xyz"], switch_uid=False)
    assert caught.value.code == "runtime_missing"
    assert "no-such-package-xyz" in caught.value.message


def test_requirements_for_extras_are_not_followed() -> None:
    names = {package.name for package in package_closure(["onnxruntime"])}
    assert "numpy" in names and "sympy" not in names


def test_an_unreachable_interpreter_falls_back_to_the_system_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    system = f"/usr/bin/python{VERSION}"
    if not os.access(system, os.X_OK):
        pytest.skip(f"no {system} on this host")
    monkeypatch.setattr("sys.executable", "/opt/elsewhere/bin/python3")
    monkeypatch.setattr("sys.base_prefix", "/opt/elsewhere")
    monkeypatch.setattr(
        "computemesh.executor.python_runtime._readable_by_others",
        lambda path: not path.startswith("/opt/elsewhere"),
    )
    resolved = resolve_python_runtime(["numpy"], switch_uid=True)
    assert (resolved.interpreter, resolved.interpreter_binds) == (system, ())


def test_offers_name_the_python_and_each_package(runtime: PythonRuntime) -> None:
    offers = runtime.offers()
    assert offers[0] == f"python{VERSION}"
    assert any(label.startswith(f"python{VERSION}/onnxruntime==") for label in offers)
    assert parse_offer("python3.11/numpy==2.4.6") == ("3.11", "numpy", "2.4.6")
    assert parse_offer("python3.11") == ("3.11", None, None)
    assert parse_offer("node20") is None


# Read-only binds in the sandbox ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bind",
    [
        ReadOnlyBind("relative/src", "/opt/x"),
        ReadOnlyBind("/src", "opt/x"),
        ReadOnlyBind("/src", "/opt/../work/x"),
        ReadOnlyBind("/src", "/"),
        ReadOnlyBind("/src", "/work"),
        ReadOnlyBind("/src", "/work/lib"),
        ReadOnlyBind("/src", "/etc/passwd"),
        ReadOnlyBind("/src", "/tmp/x"),
        ReadOnlyBind("/src", "/usr/lib/python3"),
        ReadOnlyBind("/src", "/lib/x86_64-linux-gnu"),
    ],
)
def test_binds_over_the_sandbox_own_places_are_refused(bind: ReadOnlyBind) -> None:
    with pytest.raises(ValueError):
        check_read_only_bind(bind)
    with pytest.raises(ExecutionError) as caught:
        ProcessExecutor(sandbox=False, ro_binds=[bind])
    assert caught.value.code == "invalid_bind"


def test_binds_are_mounted_with_the_system_before_the_work_dir_and_the_remount() -> None:
    binds = (ReadOnlyBind("/srv/py", "/srv/py"), ReadOnlyBind("/v/np", f"{RUNTIME_SITE_DIR}/np"))
    config = SandboxConfig(
        bwrap="/usr/bin/bwrap",
        work_source="/srv/jobs/j1/work",
        command=["python3"],
        env={},
        layout=HostLayout(root_entries=(), etc_entries=()),
        tmpfs_bytes=1 << 20,
        info_fd=9,
        ro_binds=binds,
    )
    options = build_bwrap_argv(config)
    options = options[: options.index("--")]
    pairs = [tuple(options[i + 1 : i + 3]) for i, arg in enumerate(options) if arg == "--ro-bind"]
    assert pairs == [("/usr", "/usr"), ("/srv/py", "/srv/py"), ("/v/np", f"{RUNTIME_SITE_DIR}/np")]
    last_bind = max(i for i, arg in enumerate(options) if arg == "--ro-bind")
    root_remount = options.index("/", options.index("--bind")) - 1
    assert options[root_remount] == "--remount-ro"
    assert last_bind < options.index("--bind") < root_remount
    plain = build_bwrap_argv(dataclasses.replace(config, ro_binds=()))
    assert plain.count("--ro-bind") == 1


# What a node advertises and refuses ---------------------------------------------------------


@dataclass
class RuntimeExecutor(FakeExecutor):
    runtimes: tuple[str, ...] = LABELS


def onnx_spec(runtime: dict[str, object] | None = None, executor: str = "onnx") -> JobSpec:
    data: dict[str, object] = {"name": "t", "executor": executor, "command": ["m.onnx"]}
    if runtime is not None:
        data["runtime"] = runtime
    return JobSpec.model_validate(data)


@pytest.mark.parametrize(
    ("wanted", "reasons"),
    [
        ({"python": "3.11", "packages": ["numpy", "ONNXRuntime"]}, []),
        ({"python": "3.11", "packages": ["numpy==2.4.6"]}, []),
        (
            {"python": "3.12"},
            ["runtime: python 3.12 not offered by the onnx executor (python 3.11)"],
        ),
        (
            {"python": "3.11", "packages": ["torch", "numpy==1.26.4"]},
            [
                "runtime: package torch not offered with python 3.11",
                "runtime: package numpy==1.26.4 wanted, 2.4.6 offered",
            ],
        ),
    ],
)
def test_unmet_runtime_names_each_missing_part(
    wanted: dict[str, object], reasons: list[str]
) -> None:
    assert unmet_runtime(RuntimeSpec.model_validate(wanted), LABELS, "onnx") == reasons


def test_the_executor_the_job_names_must_offer_the_runtime() -> None:
    executors = {"process": FakeExecutor(), "onnx": RuntimeExecutor(name="onnx")}
    assert runtime_refusals(onnx_spec({"python": "3.11"}), executors) == []
    assert runtime_refusals(onnx_spec(), executors) == []
    process_job = onnx_spec({"python": "3.11"}, executor="process")
    assert runtime_refusals(process_job, executors) == [
        "runtime: python 3.11 not offered by the process executor (no runtime)"
    ]
    assert offered_runtimes(executors) == sorted(LABELS)


def test_a_node_advertises_its_runtimes_and_refuses_jobs_it_cannot_give_one(
    tmp_path: Path,
) -> None:
    node = ProviderNode(
        actor=Actor(identity=Identity.generate(), transport=MemoryTransport(MemoryHub())),
        settings=NodeSettings(home=tmp_path),
        hardware=Hardware(cpu_count=2, architecture="x86_64", memory_mb=2048, disk_mb=1000),
        allocations=AllocationRepository(open_database("sqlite://")),
        executors={"onnx": RuntimeExecutor(name="onnx")},
    )
    assert node.advertisement().runtimes == sorted(LABELS)
    assert node.refusal_reasons(onnx_spec({"python": "3.11", "packages": ["numpy"]})) == []
    reasons = node.refusal_reasons(onnx_spec({"python": "3.11", "packages": ["scipy"]}))
    assert reasons == ["runtime: package scipy not offered with python 3.11"]


# The spec -----------------------------------------------------------------------------------


def test_spec_runtime_is_optional_and_validated() -> None:
    spec = onnx_spec({"python": "3.11", "packages": ["numpy", "onnxruntime==1.31.1"]})
    assert spec.executor == "onnx"
    assert spec.runtime == RuntimeSpec(python="3.11", packages=["numpy", "onnxruntime==1.31.1"])
    assert onnx_spec().runtime is None
    bad: list[dict[str, object]] = [
        {"python": "3"},
        {"python": "3.11", "packages": ["numpy>=2"]},
        {"packages": []},
    ]
    for runtime in bad:
        with pytest.raises(ValidationError):
            onnx_spec(runtime)


# The composition root ---------------------------------------------------------------------------


def test_nodes_offer_onnx_when_they_can_sandbox_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insecure = provider_app.build_executors(NodeSettings(home=tmp_path, sandbox=False))
    assert isinstance(insecure["onnx"], OnnxExecutor)
    assert insecure["onnx"].process.ro_binds == ()
    monkeypatch.setattr("computemesh.executor.process.find_bwrap", lambda path=None: None)
    assert "onnx" not in provider_app.build_executors(NodeSettings(home=tmp_path, sandbox=True))


def test_nodes_offer_process_jobs_the_runtime_of_their_settings(tmp_path: Path) -> None:
    settings = NodeSettings(home=tmp_path, sandbox=False)
    process = provider_app.build_executors(settings)["process"]
    assert isinstance(process, ProcessExecutor)
    assert "python" + VERSION in process.runtimes
    assert any(label.startswith(f"python{VERSION}/numpy==") for label in process.runtimes)
    executors = {"process": process}
    assert (
        runtime_refusals(
            onnx_spec({"python": VERSION, "packages": ["numpy"]}, "process"), executors
        )
        == []
    )
    assert runtime_refusals(
        onnx_spec({"python": VERSION, "packages": ["torch"]}, "process"), executors
    ) == [f"runtime: package torch not offered with python {VERSION}"]
    bare = provider_app.build_executors(settings.model_copy(update={"process_python_packages": ()}))
    assert bare["process"].runtimes == ()  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        NodeSettings(home=tmp_path, process_python_packages=("numpy==2",))
