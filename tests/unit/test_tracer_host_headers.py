"""Doctor's kernel-headers line against header trees laid out as distributions ship them."""
from __future__ import annotations

from tracer import host


def _headers(root, release, utsrelease=None, kernel_release=None):
    build = root / release / "build"
    (build / "include/generated").mkdir(parents=True)
    (build / "include/config").mkdir(parents=True)
    if utsrelease is not None:
        (build / "include/generated/utsrelease.h").write_text(f'#define UTS_RELEASE "{utsrelease}"\n')
    if kernel_release is not None:
        (build / "include/config/kernel.release").write_text(kernel_release + "\n")
    return str(root)


def test_debian_exact_headers_are_exact(tmp_path):
    """Debian's linux-headers-5.10.0-46-amd64 (5.10.262): UTS_RELEASE is the release, and
    include/config/kernel.release the upstream version (so 6.1.0-57-amd64: 6.1.192)."""
    modules = _headers(tmp_path, "5.10.0-46-amd64", "5.10.0-46-amd64", "5.10.262")
    check = host.check_headers("5.10.0-46-amd64", modules)
    assert check.ok is True and check.value.startswith("exact ("), check


def test_headers_of_another_kernel_are_generic_linked(tmp_path):
    modules = _headers(tmp_path, "6.1.0-57-amd64", "6.1.0-55-amd64", "6.1.190")
    check = host.check_headers("6.1.0-57-amd64", modules)
    assert check.ok is None and "built for 6.1.0-55-amd64" in check.value, check


def test_kernel_release_is_read_where_there_is_no_utsrelease(tmp_path):
    modules = _headers(tmp_path, "6.12.1", kernel_release="6.12.1")
    assert host.check_headers("6.12.1", modules).ok is True


def test_missing_headers_say_how_to_install_them(tmp_path):
    check = host.check_headers("9.9.9-no-such", str(tmp_path))
    if check.ok:  # this kernel has its headers built in (CONFIG_IKHEADERS)
        assert "IKHEADERS" in check.value
    else:
        assert check.ok is False and "missing" in check.value
        assert "linux-headers-9.9.9-no-such" in check.fix
