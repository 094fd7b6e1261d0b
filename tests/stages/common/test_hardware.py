from stages.common import hardware


def test_tensorrt_version_comes_from_its_module_whatever_installed_it(tmp_path, monkeypatch):
    """tensorrt-cu12/-cu13 wheels and JetPack's system packages are no ``tensorrt`` distribution."""
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text('import ctypes\n\n__version__ = "10.3.0.30"\nraise ImportError("no GPU")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    hardware.module_version.cache_clear()
    try:
        assert hardware.package_versions()["tensorrt"] == "10.3.0.30"  # read, never imported
    finally:
        hardware.module_version.cache_clear()


def test_an_absent_module_has_no_version():
    assert hardware.module_version("no_such_module_here") is None
