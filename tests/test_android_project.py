"""The Android project's files agree with each other and with the host build (pure Python).

Nothing here can build the app (no SDK or NDK on the development machines); these checks catch
the mismatches that would otherwise surface only in Android Studio or on a phone: a Gradle build
pointing at another CMakeLists, a JNI symbol that no Kotlin `external fun` declares, a service
without its process or foreground type, a catalog alias that does not exist.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "android_app"
CPP = APP / "src/main/cpp"
MANIFEST = APP / "src/main/AndroidManifest.xml"
APP_GRADLE = APP / "build.gradle"
ROOT_GRADLE = ROOT / "build.gradle"
SETTINGS = ROOT / "settings.gradle"
CATALOG = ROOT / "gradle/libs.versions.toml"
WRAPPER = ROOT / "gradle/wrapper/gradle-wrapper.properties"
JNI_CPP = CPP / "jni/runner_jni.cpp"
JNI_CMAKE = CPP / "jni/CMakeLists.txt"
HOST_CMAKE = CPP / "CMakeLists.txt"
KOTLIN = APP / "src/main/java"

A = "{http://schemas.android.com/apk/res/android}"

# Android 14+: a foreground service type needs its own permission.
FGS_TYPE_PERMISSION = {
    "camera": "FOREGROUND_SERVICE_CAMERA",
    "connectedDevice": "FOREGROUND_SERVICE_CONNECTED_DEVICE",
    "dataSync": "FOREGROUND_SERVICE_DATA_SYNC",
    "health": "FOREGROUND_SERVICE_HEALTH",
    "location": "FOREGROUND_SERVICE_LOCATION",
    "mediaPlayback": "FOREGROUND_SERVICE_MEDIA_PLAYBACK",
    "mediaProcessing": "FOREGROUND_SERVICE_MEDIA_PROCESSING",
    "mediaProjection": "FOREGROUND_SERVICE_MEDIA_PROJECTION",
    "microphone": "FOREGROUND_SERVICE_MICROPHONE",
    "phoneCall": "FOREGROUND_SERVICE_PHONE_CALL",
    "remoteMessaging": "FOREGROUND_SERVICE_REMOTE_MESSAGING",
    "shortService": None,  # needs no type permission
    "specialUse": "FOREGROUND_SERVICE_SPECIAL_USE",
    "systemExempted": "FOREGROUND_SERVICE_SYSTEM_EXEMPTED",
}

# Kotlin parameter/return types as JNI C types.
KOTLIN_TO_JNI = {
    "String": "jstring", "Int": "jint", "Long": "jlong", "Boolean": "jboolean",
    "Float": "jfloat", "Double": "jdouble", "Unit": "void", "ByteArray": "jbyteArray",
}


def _gradle_code(path: Path) -> str:
    """A Gradle (Groovy) file without its comments, so commented-out settings do not count."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"(^|\s)//.*$", "", line) for line in text.splitlines())


def _gradle_string(code: str, key: str) -> str:
    m = re.search(rf"\b{key}\s*[=(]?\s*['\"]([^'\"]+)['\"]", code)
    assert m, f"{key} is not set in the Gradle file"
    return m.group(1)


def _blocks(code: str, name: str) -> list[str]:
    """The bodies of every `name { ... }` block (braces balanced), outermost first."""
    bodies = []
    for m in re.finditer(rf"\b{name}\s*\{{", code):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(code[i], 0)
            i += 1
        bodies.append(code[m.end():i - 1])
    return bodies


def _block(code: str, name: str) -> str:
    bodies = _blocks(code, name)
    assert bodies, f"no '{name} {{ }}' block"
    return bodies[0]


def _manifest() -> ET.Element:
    return ET.parse(MANIFEST).getroot()


def _namespace() -> str:
    return _gradle_string(_gradle_code(APP_GRADLE), "namespace")


def _component(name: str) -> str:
    """A manifest component name as a fully qualified class name."""
    return _namespace() + name if name.startswith(".") else name


def _service(name: str = ".RunnerService") -> ET.Element:
    app = _manifest().find("application")
    assert app is not None, "AndroidManifest.xml has no <application>"
    for s in app.findall("service"):
        if _component(s.get(A + "name", "")) == _component(name):
            return s
    pytest.fail(f"AndroidManifest.xml declares no service {name}")


def _kotlin_class_file(fqcn: str) -> Path:
    pkg, _, cls = fqcn.rpartition(".")
    return KOTLIN / pkg.replace(".", "/") / f"{cls}.kt"


def _cmake_code(path: Path) -> str:
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


# ---- Gradle --------------------------------------------------------------------------------


def test_native_build_is_the_host_cmake_project():
    code = _gradle_code(APP_GRADLE)
    # defaultConfig's externalNativeBuild holds the arguments; android's holds the path.
    paths = [re.search(r"\bpath\s*=?\s*['\"]([^'\"]+)['\"]", b)
             for e in _blocks(code, "externalNativeBuild") for b in _blocks(e, "cmake")]
    paths = [m.group(1) for m in paths if m]
    assert len(paths) == 1, f"expected one externalNativeBuild cmake path, got {paths}"
    path = paths[0]
    assert (APP / path).resolve() == HOST_CMAKE.resolve(), (
        f"android_app/build.gradle builds {path}, not the host runner's {HOST_CMAKE}")
    # The host build (scripts/setup.sh) configures the same source directory.
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert "cmake -S android_app/src/main/cpp " in setup


def test_cmake_arguments_name_existing_options():
    code = _gradle_code(APP_GRADLE)
    args = dict(re.findall(r"['\"]-D(\w+)=([^'\"]*)['\"]", _block(code, "defaultConfig")))
    assert args.get("NPAS_BUILD_JNI") == "ON"
    assert args.get("NPAS_BUILD_HOST_RUNNER") == "OFF"
    assert args.get("NPAS_BUILD_TESTS") == "OFF"
    assert args.get("ANDROID_STL") == "c++_shared"
    cmake = _cmake_code(HOST_CMAKE)
    declared = set(re.findall(r"\boption\((\w+)", cmake))
    declared |= set(re.findall(r"\bset\((\w+)\s+\"[^\"]*\"\s+CACHE", cmake))
    ours = {k for k in args if k.startswith("NPAS_")}
    assert ours <= declared, f"build.gradle sets options CMakeLists.txt lacks: {ours - declared}"
    # The JNI target Gradle builds is the one jni/CMakeLists.txt defines.
    targets = re.findall(r"\btargets\s+['\"](\w+)['\"]", code)
    assert targets and set(targets) <= set(
        re.findall(r"add_library\((\w+)\s+SHARED", _cmake_code(JNI_CMAKE)))


def test_abi_sdk_and_ndk_are_pinned():
    code = _gradle_code(APP_GRADLE)
    abis = re.findall(r"['\"]([\w-]+)['\"]", _block(_block(code, "defaultConfig"), "ndk"))
    assert abis == ["arm64-v8a"]
    assert int(re.search(r"\bminSdk\s+(\d+)", code).group(1)) == 24
    assert int(re.search(r"\btargetSdk\s+(\d+)", code).group(1)) >= 34
    assert int(re.search(r"\bcompileSdk\s+(\d+)", code).group(1)) >= 34
    assert re.fullmatch(r"\d+\.\d+\.\d+", _gradle_string(code, "ndkVersion"))
    jnilibs = _block(_block(code, "packaging"), "jniLibs")
    assert re.search(r"useLegacyPackaging\s*=?\s*false", jnilibs)
    props = WRAPPER.read_text()
    assert re.search(r"distributionUrl=.*gradle-\d+\.\d+(\.\d+)?-(bin|all)\.zip", props)


def test_catalog_aliases_exist():
    catalog = tomllib.loads(CATALOG.read_text())
    versions = catalog.get("versions", {})

    def norm(alias: str) -> str:  # Gradle maps '-', '_' and '.' in aliases to '.' accessors
        return re.sub(r"[-_]", ".", alias)

    plugins = {norm(a) for a in catalog.get("plugins", {})}
    libraries = {norm(a) for a in catalog.get("libraries", {})}
    used_plugins, used_libs = set(), set()
    for f in (ROOT_GRADLE, APP_GRADLE):
        code = _gradle_code(f)
        used_plugins |= set(re.findall(r"\blibs\.plugins\.([\w.]+)", code))
        used_libs |= {u for u in re.findall(r"\blibs\.([\w.]+)", code)
                      if not u.startswith(("plugins.", "versions.", "bundles."))}
    assert used_plugins, "no plugin comes from the catalog"
    assert used_plugins <= plugins, f"unknown plugin aliases: {used_plugins - plugins}"
    assert used_libs <= libraries, f"unknown library aliases: {used_libs - libraries}"
    for section in ("plugins", "libraries"):
        for alias, spec in catalog.get(section, {}).items():
            ref = spec.get("version", {}).get("ref") if isinstance(spec, dict) else None
            if ref is not None:
                assert ref in versions, (
                    f"[{section}] {alias}: version.ref '{ref}' is not in [versions]")
    assert re.search(r"include\s*\(?\s*['\"]:android_app['\"]", _gradle_code(SETTINGS))


# ---- manifest ------------------------------------------------------------------------------


def test_runner_service_declaration():
    service = _service()
    process = service.get(A + "process", "")
    assert process.startswith(":"), (
        f"RunnerService must run in its own private process (':runner'), got '{process}'")
    types = service.get(A + "foregroundServiceType", "").split("|")
    assert types != [""], "RunnerService needs android:foregroundServiceType (targetSdk 34+)"
    permissions = {p.get(A + "name") for p in _manifest().findall("uses-permission")}
    for t in types:
        assert t in FGS_TYPE_PERMISSION, f"unknown foreground service type '{t}'"
        needed = FGS_TYPE_PERMISSION[t]
        if needed:
            assert f"android.permission.{needed}" in permissions, f"type {t} needs {needed}"
    if "specialUse" in types:
        props = {p.get(A + "name"): p.get(A + "value") for p in service.findall("property")}
        assert props.get("android.app.PROPERTY_SPECIAL_USE_FGS_SUBTYPE"), (
            "specialUse needs a PROPERTY_SPECIAL_USE_FGS_SUBTYPE property saying what it is for")
    for p in ("INTERNET", "FOREGROUND_SERVICE", "POST_NOTIFICATIONS"):
        assert f"android.permission.{p}" in permissions
    # adb's `am start-foreground-service` runs as the shell user: the service must be exported,
    # and then fenced by a permission only the shell and the system hold.
    assert service.get(A + "exported") == "true"
    assert service.get(A + "permission") == "android.permission.DUMP"


def test_opencl_is_an_optional_native_library():
    app = _manifest().find("application")
    libs = {u.get(A + "name"): u.get(A + "required") for u in app.findall("uses-native-library")}
    assert libs.get("libOpenCL.so") == "false", (
        "<application> needs <uses-native-library android:name=\"libOpenCL.so\" "
        "android:required=\"false\"/>")
    # ...and the native loader really asks for that name.
    assert '"libOpenCL.so"' in (CPP / "core/opencl.cpp").read_text()


def test_manifest_components_have_kotlin_classes():
    app = _manifest().find("application")
    for tag in ("activity", "service"):
        for c in app.findall(tag):
            fqcn = _component(c.get(A + "name"))
            f = _kotlin_class_file(fqcn)
            assert f.is_file(), f"<{tag}> {fqcn} has no source file {f}"
            src = f.read_text()
            assert re.search(rf"^package {re.escape(fqcn.rpartition('.')[0])}$", src, re.M)
            assert re.search(rf"\bclass {fqcn.rpartition('.')[2]}\b", src)


# ---- JNI -----------------------------------------------------------------------------------


def _jni_functions() -> dict[str, tuple[str, list[str]]]:
    """JNI symbol -> (return type, parameter types after JNIEnv* and jclass/jobject)."""
    src = re.sub(r"//.*", "", JNI_CPP.read_text())
    out = {}
    for m in re.finditer(r"JNIEXPORT\s+(\w+)\s+JNICALL\s+(Java_\w+)\s*\(([^)]*)\)", src):
        params = [p.split()[0] for p in m.group(3).split(",") if p.strip()]
        assert params[:2] in (["JNIEnv*", "jclass"], ["JNIEnv*", "jobject"]), m.group(2)
        out[m.group(2)] = (m.group(1), params[2:])
    return out


def _kotlin_externals() -> dict[str, tuple[str, list[str]]]:
    """JNI symbol each Kotlin `external fun` binds to -> (JNI return type, JNI parameter types)."""
    out = {}
    for f in KOTLIN.rglob("*.kt"):
        src = f.read_text()
        if "external fun" not in src:
            continue
        pkg = re.search(r"^package ([\w.]+)", src, re.M).group(1)
        for cls in re.finditer(r"\b(?:object|class) (\w+)[^{]*\{", src):
            body = src[cls.end():]
            for m in re.finditer(
                    r"external fun (\w+)\s*\(([^)]*)\)\s*(?::\s*(\w+))?", body):
                params = [p.split(":")[1].strip() for p in m.group(2).split(",") if p.strip()]
                jni_params = [KOTLIN_TO_JNI[p] for p in params]
                ret = KOTLIN_TO_JNI[m.group(3) or "Unit"]
                symbol = "Java_" + f"{pkg}.{cls.group(1)}".replace("_", "_1").replace(
                    ".", "_") + "_" + m.group(1).replace("_", "_1")
                out[symbol] = (ret, jni_params)
    return out


def test_jni_functions_match_kotlin_externals():
    native, kotlin = _jni_functions(), _kotlin_externals()
    assert native, f"no JNIEXPORT functions in {JNI_CPP}"
    assert set(native) == set(kotlin), (
        f"only in runner_jni.cpp: {sorted(set(native) - set(kotlin))}; "
        f"only in Kotlin: {sorted(set(kotlin) - set(native))}")
    for symbol, signature in native.items():
        assert signature == kotlin[symbol], f"{symbol}: C {signature} vs Kotlin {kotlin[symbol]}"


def test_loaded_library_is_the_jni_target():
    targets = re.findall(r"add_library\((\w+)\s+SHARED", _cmake_code(JNI_CMAKE))
    loaded = set()
    for f in KOTLIN.rglob("*.kt"):
        loaded |= set(re.findall(r"System\.loadLibrary\(\"(\w+)\"\)", f.read_text()))
    assert loaded and loaded <= set(targets), (
        f"Kotlin loads {sorted(loaded)}, jni/CMakeLists.txt builds {targets}")


def test_jni_shell_uses_no_grpc_types():
    src = JNI_CPP.read_text()
    assert not re.search(r"#include\s+[<\"](grpc|google/protobuf|npas/runner/v1)", src)
    assert "grpc::" not in src


# ---- proto ---------------------------------------------------------------------------------


def test_android_build_generates_from_the_hosts_proto():
    cmake = _cmake_code(HOST_CMAKE)
    m = re.search(r'get_filename_component\(NPAS_PROTO_ROOT\s+"\$\{CMAKE_CURRENT_SOURCE_DIR\}'
                  r'/([^"]+)"\s+ABSOLUTE\)', cmake)
    assert m, "CMakeLists.txt no longer derives NPAS_PROTO_ROOT from its own directory"
    proto_root = (CPP / m.group(1)).resolve()
    f = re.search(r'set\(NPAS_PROTO_FILE\s+"\$\{NPAS_PROTO_ROOT\}/([^"]+)"\)', cmake)
    assert f, "CMakeLists.txt does not set NPAS_PROTO_FILE under NPAS_PROTO_ROOT"
    # The Python host's stubs come from the same file.
    from host.rpc import stubs
    assert proto_root / f.group(1) == (stubs.PROTO_ROOT / stubs.PROTO_FILE).resolve()
    # No Android-only include may point the generation at another proto.
    for inc in (CPP / "cmake").glob("*.cmake"):
        assert not re.search(r"\bset\(NPAS_PROTO_(FILE|ROOT)\b", _cmake_code(inc)), inc
    # The Android path includes the gRPC fetch inside the same service block that generates.
    service_block = cmake[cmake.index("if(NPAS_BUILD_SERVICE)"):]
    assert service_block.index("npas_grpc_android.cmake") < service_block.index("NPAS_PROTO_FILE")


# ---- resources and status keys -------------------------------------------------------------

STRINGS_XML = APP / "src/main/res/values/strings.xml"


def _calls(src: str, name: str) -> list[list[str]]:
    """The top-level arguments of every `name(...)` call (parentheses balanced, strings skipped)."""
    calls = []
    for m in re.finditer(rf"\b{name}\(", src):
        args, depth, i, start, quote = [], 1, m.end(), m.end(), None
        while depth:
            c = src[i]
            if quote:
                quote = None if c == quote and src[i - 1] != "\\" else quote
            elif c in "\"'":
                quote = c
            elif c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == "," and depth == 1:
                args.append(src[start:i].strip())
                start = i + 1
            i += 1
        args.append(src[start:i - 1].strip())
        calls.append([a for a in args if a])
    return calls


def test_kotlin_string_resources_exist_with_their_arguments():
    strings = {s.get("name"): s.text or "" for s in ET.parse(STRINGS_XML).getroot()}
    used = 0
    for f in KOTLIN.rglob("*.kt"):
        src = f.read_text()
        for name in re.findall(r"\bR\.string\.(\w+)", src):
            assert name in strings, f"{f.name} uses R.string.{name}, not in {STRINGS_XML.name}"
        for args in _calls(src, "getString"):
            m = re.fullmatch(r"R\.string\.(\w+)", args[0])
            if not m:
                continue
            used += 1
            wanted = max(map(int, re.findall(r"%(\d+)\$", strings[m.group(1)])), default=0)
            assert len(args) - 1 == wanted, (
                f"{f.name}: getString(R.string.{m.group(1)}, ...) passes {len(args) - 1} "
                f"arguments, the string '{strings[m.group(1)]}' takes {wanted}")
    assert used, "no getString(R.string...) calls found: the pattern no longer matches"


def test_status_keys_kotlin_reads_are_written():
    """Every key Kotlin reads from a status JSON is one runner_jni.cpp's status() writes or one
    Kotlin puts itself, so a renamed field cannot silently show as empty on the phone."""
    kotlin = "\n".join(f.read_text() for f in KOTLIN.rglob("*.kt"))
    consts = dict(re.findall(r"\bconst val (\w+) = \"([^\"]*)\"", kotlin))

    def keys(pattern: str) -> set[str]:
        found = set()
        for quoted, const in re.findall(pattern, kotlin):
            found.add(quoted or consts.get(const, const))
        return found

    read = keys(r"\b(?:opt\w*|has|get(?:String|Int|Long|Double|Boolean|JSONObject))"
                r"\(\s*(?:\"(\w+)\"|([A-Z][A-Z0-9_]+)\s*[,)])")
    put = keys(r"\.put\(\s*(?:\"(\w+)\"|([A-Z][A-Z0-9_]+)\s*[,)])")
    native = set(re.findall(r'\\"(\w+)\\":', JNI_CPP.read_text()))
    assert {"running", "last_measurement", "median_ns", "runs"} <= native
    assert read, "no status reads found in Kotlin: the pattern no longer matches"
    assert read <= native | put, (
        f"Kotlin reads status keys nobody writes: {sorted(read - native - put)}")
