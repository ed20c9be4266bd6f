source .gl/setup.sh >/dev/null 2>&1; chmod +x /tmp/site/cmeel.prefix/bin/* 2>/dev/null; export PATH=/tmp/site/cmeel.prefix/bin:$PATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export KGEN_DB=$OUT/tuning.sqlite
rm -rf ~/.cache/kgen
timeout 200 python3 -m cProfile -o $OUT/tune.prof -m kgen.cli tune --suite quick --case "P3" --budget 60 2>&1 | grep -E "candidate|tuned in|resumed"
