"""The host description printed by the benchmarks, read from real /proc and /sys files."""

import os

from usx_stream.hostinfo import describe_host, host_line


def test_this_host_is_described():
    host = describe_host()
    assert host["logical_cpus"] == os.cpu_count()
    if os.path.exists("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list"):
        assert host["threads_per_core"] >= 1
    assert str(host["logical_cpus"]) in host_line(host)


def test_smt_siblings_and_model_are_read_from_the_files(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\n")
    topo = tmp_path / "cpu" / "cpu0" / "topology"
    topo.mkdir(parents=True)
    (topo / "thread_siblings_list").write_text("0-1\n")
    host = describe_host(proc=tmp_path, sys_cpu=tmp_path / "cpu")
    assert host["cpu_model"] == "Test CPU 9000" and host["threads_per_core"] == 2
    assert "Test CPU 9000" in host_line(host) and "2 threads per core" in host_line(host)
    (topo / "thread_siblings_list").write_text("0,4\n")
    assert describe_host(proc=tmp_path, sys_cpu=tmp_path / "cpu")["threads_per_core"] == 2


def test_unreadable_files_give_none(tmp_path):
    host = describe_host(proc=tmp_path / "absent", sys_cpu=tmp_path / "absent")
    assert host["cpu_model"] is None and host["threads_per_core"] is None
    assert host_line(host).startswith("unknown CPU")
