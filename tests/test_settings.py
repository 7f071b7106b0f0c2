"""storage/settings.py: parsing rules, and bad values stopping a process with exit code 2."""

import re
import subprocess
import sys

import pytest

from http_client import free_port
from processes import REPO, service_env
from storage import settings as config


@pytest.mark.parametrize(
    "raw, seconds", [(None, 5.0), ("", 5.0), ("5", 5.0), ("0.25", 0.25), (" 2 ", 2.0), ("1e1", 10.0)]
)
def test_interval_accepts(raw, seconds):
    environ = {} if raw is None else {"MINI_ANALYTICS_INTERVAL": raw}
    assert config.interval(environ) == seconds


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", "-inf", "5s", "0x10", "1e-9", "1e9"])
def test_interval_rejects(raw):
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_INTERVAL"):
        config.interval({"MINI_ANALYTICS_INTERVAL": raw})


@pytest.mark.parametrize("raw", ["0", "65536", "http", "-5", "80.5"])
def test_port_rejects(raw):
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_PORT"):
        config.port({"MINI_ANALYTICS_PORT": raw})


def test_fsync_values():
    assert config.fsync({}) is True
    assert config.fsync({"MINI_ANALYTICS_FSYNC": "off"}) is False
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_FSYNC"):
        config.fsync({"MINI_ANALYTICS_FSYNC": "sometimes"})


@pytest.mark.parametrize(
    "module, setting, value",
    [
        ("worker", "interval", "abc"),
        ("worker", "interval", "0"),
        ("worker", "interval", "nan"),
        ("app", "port", "99999"),
        ("app", "fsync", "maybe"),
        ("app", "ingest_cpu", "4096"),
        ("worker", "ingest_cpu", "x"),
        ("app", "cluster", "localhost:4222"),
        ("worker", "cluster", "nats:/x"),
        ("worker", "overview_store", "rows"),
        ("app", "overview_store", "postgres"),
    ],
)
def test_bad_setting_exits_2_with_one_line_and_touches_nothing(tmp_path, module, setting, value):
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, capture_output=True, text=True, timeout=30,
        env=service_env(state_dir, **{setting: value}),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"MINI_ANALYTICS_{setting.upper()}" in lines[0]
    assert "Traceback" not in result.stderr
    assert not state_dir.exists()


@pytest.mark.parametrize("module", ["worker", "app"])
def test_an_unusable_state_folder_is_a_clear_error(tmp_path, module):
    not_a_folder = tmp_path / "state"
    not_a_folder.write_text("a file where the state folder should be")
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, capture_output=True, text=True, timeout=30,
        env=service_env(not_a_folder, port=free_port()),
    )
    assert result.returncode == 2
    assert "MINI_ANALYTICS_STATE_DIR is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["worker", "app"])
def test_a_mistyped_state_folder_is_not_created(tmp_path, module):
    mistyped = tmp_path / "no-such-parent" / "state"
    result = subprocess.run(
        [sys.executable, "-m", module], cwd=REPO, capture_output=True, text=True, timeout=30,
        env=service_env(mistyped, port=free_port()),
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and str(mistyped) in result.stderr
    assert not (tmp_path / "no-such-parent").exists()


def test_a_missing_state_folder_under_an_existing_parent_is_created(tmp_path):
    assert config.state_dir({"MINI_ANALYTICS_STATE_DIR": str(tmp_path / "new")}) == tmp_path / "new"


def test_stalled_after_defaults_to_three_intervals_or_30_s():
    assert config.stalled_after({}) == 30.0
    assert config.stalled_after({"MINI_ANALYTICS_INTERVAL": "20"}) == 60.0
    assert config.stalled_after({"MINI_ANALYTICS_STALLED_AFTER": "5"}) == 5.0
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_STALLED_AFTER"):
        config.stalled_after({"MINI_ANALYTICS_STALLED_AFTER": "soon"})


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["-h"], 0), (["--port", "1"], 2)])
def test_the_ingest_takes_no_arguments(tmp_path, args, code):
    result = subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
        timeout=30, env=service_env(tmp_path / "state"),
    )
    assert result.returncode == code
    assert "environment variable" in result.stdout + result.stderr
    assert not (tmp_path / "state").exists()  # it never started


def test_ingest_cpu_choices():
    many, one = {0, 1, 2, 3}, {0}
    assert config.ingest_cpu({}, allowed=many) == 3  # auto: the last CPU
    assert config.ingest_cpu({}, allowed=one) is None  # auto on one CPU: nothing to choose
    assert config.ingest_cpu({"MINI_ANALYTICS_INGEST_CPU": "all"}, allowed=many) is None
    assert config.ingest_cpu({"MINI_ANALYTICS_INGEST_CPU": "1"}, allowed=many) == 1
    for bad in ("7", "-1", "one", "1,2"):
        with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_INGEST_CPU"):
            config.ingest_cpu({"MINI_ANALYTICS_INGEST_CPU": bad}, allowed=many)


def test_cluster_mode_settings():
    assert config.cluster({}) is None  # the single-machine mode
    assert config.cluster({"MINI_ANALYTICS_CLUSTER": "nats://a:4222, nats://b:4223"}) == [
        "nats://a:4222", "nats://b:4223"]
    for bad in ("localhost:4222", "nats://a", "http://a:4222"):
        with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_CLUSTER"):
            config.cluster({"MINI_ANALYTICS_CLUSTER": bad})
    assert config.partition_count({}) is None  # the stream's, whatever it is
    assert config.partition_count({"MINI_ANALYTICS_PARTITION_COUNT": "16"}) == 16
    for bad in ("0", "257", "4.5", "-1", "many"):
        with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_PARTITION_COUNT"):
            config.partition_count({"MINI_ANALYTICS_PARTITION_COUNT": bad})
    assert config.takeover({}) == 15.0
    assert config.takeover({"MINI_ANALYTICS_TAKEOVER": "2.5"}) == 2.5
    for bad in ("1", "601", "soon"):
        with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_TAKEOVER"):
            config.takeover({"MINI_ANALYTICS_TAKEOVER": bad})
    assert config.replicas({}) == 3
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_REPLICAS"):
        config.replicas({"MINI_ANALYTICS_REPLICAS": "2"})
    assert config.publish_timeout({}) == 10.0
    with pytest.raises(config.ConfigError, match="MINI_ANALYTICS_PUBLISH_TIMEOUT"):
        config.publish_timeout({"MINI_ANALYTICS_PUBLISH_TIMEOUT": "120"})  # past the dedupe


def test_the_overview_store_is_sqlite_or_duckdb():
    assert config.overview_store({}) == "sqlite"
    assert config.overview_store({"MINI_ANALYTICS_OVERVIEW_STORE": " DuckDB"}) == "duckdb"


def test_the_single_machine_mode_never_imports_nats():
    code = ("import sys, app.__main__, app.api, worker.__main__, worker.runner; "
            "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))")
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, timeout=30, check=True)
    assert shown.stdout.strip() == "[]"


def test_a_misspelt_setting_is_named_with_the_closest_one():
    assert config.unknown({"MINI_ANALYTICS_INTERVALL": "1", "MINI_ANALYTICS_PORT": "80",
                           "OTHER": "x"}) == [
        "MINI_ANALYTICS_INTERVALL is not a setting and is ignored "
        "(did you mean MINI_ANALYTICS_INTERVAL?)"]
    assert config.unknown({"MINI_ANALYTICS_VERBOSE": "1"}) == [
        "MINI_ANALYTICS_VERBOSE is not a setting and is ignored (see --help for the settings)"]


@pytest.mark.parametrize("module", ["worker", "app"])
def test_warnings_and_a_bad_setting_are_whole_log_lines_also_in_the_log_file(tmp_path, module):
    state_dir = tmp_path / "state"
    (state_dir / "logs").mkdir(parents=True)  # a folder the program has run on before
    env = service_env(state_dir, interval="5s", port=free_port())
    env["MINI_ANALYTICS_INTERVALL"] = "1"
    result = subprocess.run([sys.executable, "-m", module], cwd=REPO, capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 2
    program = "ingest" if module == "app" else "worker"
    lines = result.stderr.splitlines()
    assert [line.split(" ", 4)[2:4] for line in lines] == [
        [program, "WARNING"], [program, "CRITICAL"]], lines
    assert "did you mean MINI_ANALYTICS_INTERVAL?" in lines[0]
    assert lines[1].endswith("got '5s'; exiting")
    assert (state_dir / "logs" / f"{program}.log").read_text().splitlines() == lines
    assert sorted(path.name for path in state_dir.iterdir()) == ["logs"]  # nothing else


@pytest.mark.parametrize("module", ["worker", "app"])
def test_help_lists_every_setting_with_its_default(module):
    shown = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                           capture_output=True, text=True, timeout=30, check=True).stdout
    for name, default, _ in config.SETTINGS:
        line = next(line for line in shown.splitlines()
                    if line.startswith(f"  MINI_ANALYTICS_{name} "))
        assert line.endswith(f"(default: {default})"), line


def test_the_configuration_table_documents_exactly_the_settings():
    table = (REPO / "README.md").read_text()
    documented = re.findall(r"^\| `MINI_ANALYTICS_([A-Z_]+)` \|", table, re.MULTILINE)
    assert documented == [name for name, _, _ in config.SETTINGS]


def test_the_defaults_help_shows_are_the_defaults_parsed():
    # SETTINGS says the defaults for people; the functions apply them: they must agree.
    shown = {name: default for name, default, _ in config.SETTINGS}
    switch = {True: "on", False: "off"}
    assert shown["INTERVAL"] == f"{config.interval({}):g}"
    assert shown["HOST"] == config.host({})
    assert shown["PORT"] == str(config.port({}))
    assert shown["THREADS"] == str(config.threads({}))
    assert shown["FSYNC"] == switch[config.fsync({})]
    assert shown["SERIES"] == switch[config.series({})]
    assert shown["MINUTE_RETENTION_HOURS"] == f"{config.minute_retention({}) / 3600:g}"
    assert shown["REPLICAS"] == str(config.replicas({}))
    assert shown["PUBLISH_TIMEOUT"] == f"{config.publish_timeout({}):g}"
    assert shown["OVERVIEW_STORE"] == config.overview_store({})
    assert config.state_dir({}) == config.DEFAULT_STATE_DIR and shown["STATE_DIR"].startswith("state/")
