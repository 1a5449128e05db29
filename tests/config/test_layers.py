"""Layered config: tillplug.toml, then conf.d/*.toml in name order; a later layer wins key by key."""

from pathlib import Path

import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from tillplug.commands.cli import main
from tillplug.config import check_config, load_config
from tillplug.config.layers import Merged, merge
from tillplug.errors import ConfigError

BASE = 'till_id = "t1"\nbranch_id = "b1"\n[engine]\npreset = "simulator"\n'


def layered(tmp_path: Path, base: str, **drop_ins: str) -> Path:
    main_file = tmp_path / "tillplug.toml"
    main_file.write_text(base)
    if drop_ins:
        (tmp_path / "conf.d").mkdir()
    for name, text in drop_ins.items():
        (tmp_path / "conf.d" / f"{name}.toml").write_text(text)
    return main_file


# -- the merge, over random layers ---------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 3), max_size=2))
tables = st.dictionaries(KEYS, st.one_of(scalars, st.dictionaries(KEYS, scalars, max_size=3)), max_size=3)
device = st.fixed_dictionaries(
    {"name": st.sampled_from(["s1", "s2", "s3"])}, optional={"port": scalars, "lane": scalars}
)
layer = st.fixed_dictionaries(
    {},
    optional={
        "top": tables,
        "x": scalars,
        "scanners": st.lists(device, max_size=3, unique_by=lambda d: str(d["name"])),
    },
)


def leaves(data, at=()):
    """Every leaf key path of one layer (lists are one value), devices keyed by name."""
    for key, value in data.items():
        if key == "scanners":
            for entry in value:
                for field, inner in entry.items():
                    yield ("scanners", entry["name"], field), inner
        elif isinstance(value, dict) and value:
            yield from leaves(value, (*at, key))
        else:
            yield (*at, key), value


def by_name(merged: Merged):
    """The merged data and its origins with device indices turned into names."""
    names = [e["name"] for e in merged.data.get("scanners", [])]
    origins: dict[tuple[object, ...], str] = {}
    for path, source in merged.origins.items():
        if path[0] == "scanners" and len(path) == 3:
            origins[("scanners", names[int(path[1])], path[2])] = source
        elif path[0] != "scanners":
            origins[path] = source
    return names, origins


def lookup(data, path):
    if path[0] == "scanners":
        entry = next(e for e in data["scanners"] if e["name"] == path[1])
        return entry[path[2]]
    for key in path:
        data = data[key]
    return data


@given(st.lists(layer, min_size=1, max_size=4))
def test_each_value_comes_from_the_last_layer_that_sets_it(layers):
    merged = merge([(f"{i}.toml", data) for i, data in enumerate(layers)])
    names, origins = by_name(merged)
    expected = {}  # key path -> (value, layer) as the last writer left it
    for i, data in enumerate(layers):
        for path, value in leaves(data):
            table_there = any(k[: len(path)] == path and (len(k) > len(path) or expected[k][0] == {}) for k in expected)
            if value == {} and table_there:
                continue  # an empty [table] over a table adds nothing
            if path[0] == "scanners" and path[2] == "name" and path in expected:
                continue  # the name matched the entry: the entry stays where it was first written
            # A table replaced by a scalar (or the reverse) drops what was under it, as TOML reads it.
            for known in [k for k in expected if k[: len(path)] == path or path[: len(k)] == k]:
                if known[0] != "scanners" or known == path:
                    del expected[known]
            expected[path] = (value, f"{i}.toml")
    for path, (value, source) in expected.items():
        assert lookup(merged.data, path) == value, path
        assert origins[path] == source, path
    # Devices: every name once, in the order it first appeared.
    first_seen = list(dict.fromkeys(e["name"] for data in layers for e in data.get("scanners", [])))
    assert names == first_seen


@given(st.lists(layer, min_size=1, max_size=3))
def test_an_empty_layer_changes_nothing_and_a_repeated_last_layer_is_idempotent(layers):
    plain = merge([(f"{i}", d) for i, d in enumerate(layers)])
    with_empty = merge([("e", {}), *[(f"{i}", d) for i, d in enumerate(layers)], ("z", {})])
    assert with_empty.data == plain.data
    again = merge([*[(f"{i}", d) for i, d in enumerate(layers)], ("again", layers[-1])])
    assert again.data == plain.data


@given(st.lists(st.sampled_from([9600, 19200, 38400, 115200]), min_size=1, max_size=4), st.randoms())
def test_through_real_files_the_last_drop_in_by_name_wins(bauds, random):
    """Files named out of order on disk are still read in name order (chain, store, lane)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        names = [f"{10 * (i + 1)}-layer" for i in range(len(bauds))]
        order = list(range(len(bauds)))
        random.shuffle(order)  # written to disk in any order
        main_file = layered(Path(tmp), BASE + '[[scanners]]\nname = "front"\nport = "/dev/ttyACM0"\n')
        (Path(tmp) / "conf.d").mkdir()
        for i in order:
            (Path(tmp) / "conf.d" / f"{names[i]}.toml").write_text(
                tomli_w.dumps({"scanners": [{"name": "front", "baudrate": bauds[i]}]})
            )
        report = check_config(main_file)
        assert report.ok, report.problems
        assert report.config is not None and report.layers is not None
        assert report.config.scanners[0].baudrate == bauds[-1]
        assert report.config.scanners[0].port == "/dev/ttyACM0"
        assert report.layers.origins[("scanners", 0, "baudrate")].endswith(f"{names[-1]}.toml")


# -- files, errors ----------------------------------------------------------------------------------


def test_devices_merge_by_name_and_new_names_are_added(tmp_path):
    main_file = layered(
        tmp_path,
        BASE + '[[scanners]]\nname = "front"\nport = "/dev/ttyACM0"\n',
        **{
            "10-chain": "[engine]\nread_timeout = 4.0\n[points]\nrate_points = 50\n",
            "20-store": '[[scanners]]\nname = "front"\nlane = 3\n[[scanners]]\nname = "back"\nport = "/dev/ttyACM1"\n',
            "30-lane": '[[printers]]\nname = "p1"\nconnection = "tcp://127.0.0.1:9100"\n[points]\nrate_points = 70\n',
        },
    )
    config = load_config(main_file)
    assert [(s.name, s.port, s.lane) for s in config.scanners] == [
        ("front", "/dev/ttyACM0", 3),
        ("back", "/dev/ttyACM1", 1),
    ]
    assert [p.name for p in config.printers] == ["p1"]
    assert config.engine.preset == "simulator" and config.engine.read_timeout == 4.0
    assert config.points.rate_points == 70


def test_only_toml_files_count_and_none_is_needed(tmp_path):
    main_file = layered(tmp_path, BASE, **{"10-x": 'currency = "EUR"\n'})
    (tmp_path / "conf.d" / "20-old.toml.dpkg-old").write_text('currency = "JPY"\n')
    (tmp_path / "conf.d" / ".#30-edit.toml").write_text("not toml at all [[[")
    assert load_config(main_file).currency == "EUR"
    (tmp_path / "conf.d" / "10-x.toml").unlink()
    assert load_config(main_file).currency == "GBP"


def test_an_error_names_the_drop_in_and_the_key(tmp_path, capsys):
    main_file = layered(
        tmp_path,
        BASE + '[[scanners]]\nname = "front"\nport = "/dev/ttyACM0"\n',
        **{"20-store": '[[scanners]]\nname = "front"\nbaudrate = 1234\n', "30-lane": "[points]\nrate_pionts = 1\n"},
    )
    assert main(["check-config", str(main_file)]) == 2
    out = capsys.readouterr().out
    assert f"error: {tmp_path}/conf.d/20-store.toml: scanners[0].baudrate:" in out
    assert f"error: {tmp_path}/conf.d/30-lane.toml: points.rate_pionts: unknown key" in out


def test_a_missing_key_names_every_file_that_wrote_its_table(tmp_path):
    main_file = layered(tmp_path, 'till_id = "t1"\n[engine]\npreset = "eu"\n', **{"20-store": 'branch_id = "b"\n'})
    try:
        load_config(main_file)
    except ConfigError as exc:
        text = exc.message
    else:
        raise AssertionError("a real engine without credentials loaded")
    assert f"{tmp_path}/tillplug.toml: engine: the real engine needs api_key" in text


def test_bad_toml_in_a_drop_in_names_the_file_and_the_line(tmp_path):
    main_file = layered(tmp_path, BASE, **{"20-store": 'currency = "EUR"\nlane = \n'})
    report = check_config(main_file)
    assert not report.ok
    [problem] = report.problems
    assert problem.source == f"{tmp_path}/conf.d/20-store.toml"
    assert "line 2" in problem.message


def test_a_device_without_a_name_in_a_drop_in_is_refused_by_file_and_key(tmp_path):
    main_file = layered(tmp_path, BASE, **{"20-store": '[[printers]]\nconnection = "tcp://127.0.0.1:9100"\n'})
    [problem] = check_config(main_file).problems
    assert (problem.source, problem.path) == (f"{tmp_path}/conf.d/20-store.toml", "printers[0].name")
    assert "merged across layers by name" in problem.message


def test_a_secret_written_inline_in_a_drop_in_is_refused_and_not_echoed(tmp_path, capsys):
    main_file = layered(tmp_path, BASE, **{"20-store": '[api]\ntoken = "hunter2-inline-token"\n'})
    assert main(["check-config", str(main_file)]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path}/conf.d/20-store.toml: api.token: must be an absolute path" in out
    assert "hunter2" not in out


def test_explain_prints_each_value_with_its_file(tmp_path, capsys):
    main_file = layered(
        tmp_path,
        BASE + '[[scanners]]\nname = "front"\nport = "/dev/ttyACM0"\n',
        **{"20-store": 'currency = "EUR"\n', "30-lane": '[[scanners]]\nname = "front"\nlane = 2\n'},
    )
    assert main(["check-config", "--explain", str(main_file)]) == 0
    lines = {line.split(" = ")[0]: line for line in capsys.readouterr().out.splitlines() if " = " in line}
    assert lines["till_id"].endswith(f"# {tmp_path}/tillplug.toml")
    assert lines["currency"].endswith(f"# {tmp_path}/conf.d/20-store.toml")
    assert lines["scanners[0].lane"].endswith(f"# {tmp_path}/conf.d/30-lane.toml")
    assert lines["scanners[0].port"].endswith(f"# {tmp_path}/tillplug.toml")
    assert lines["log_level"].endswith("# (default)")


def test_the_daemon_reads_the_merged_config(tmp_path):
    """wiring.run and reload call load_config: the drop-ins reach the daemon (its state_dir here)."""
    state = tmp_path / "state"
    main_file = layered(tmp_path, BASE, **{"30-lane": f'state_dir = "{state}"\n'})
    assert load_config(main_file).state_dir == state
