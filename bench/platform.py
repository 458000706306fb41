"""`python bench/platform.py [options]`: the platform at operator scale (issue 14), bench/platform_ingest.py.

This file's name is also the standard library's `platform`, and Python puts a script's folder first on its path,
so an `import platform` in any script of bench/ (or in a library it uses: pika, psutil, ...) finds this file.
Imported that way it hands over the standard library's module; run as a script it runs platform_ingest.py.
"""

if __name__ == "platform":
    import importlib.util as _util
    import sys as _sys
    import sysconfig as _sysconfig
    from pathlib import Path as _Path

    _spec = _util.spec_from_file_location("platform", _Path(_sysconfig.get_paths()["stdlib"]) / "platform.py")
    assert _spec is not None and _spec.loader is not None
    _module = _util.module_from_spec(_spec)
    _sys.modules["platform"] = _module
    _spec.loader.exec_module(_module)
elif __name__ == "__main__":
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).with_name("platform_ingest.py")), run_name="__main__")
