# Source this on a bare GPU machine (torch already installed) to run dserve from this checkout:
# wheels carried in .whl/ (no network there), then dserve and its plugins in editable mode.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for pkg in . plugins/*/; do
  if [ -f "$pkg/pyproject.toml" ]; then
    python3 -m pip install -q --no-deps --no-build-isolation -e "$pkg" || echo "device_env: could not install $pkg"
  fi
done
