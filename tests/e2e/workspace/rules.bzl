"""A rule with a directory (tree artifact) output; genrule cannot declare one."""

def _gen_dir_impl(ctx):
    out = ctx.actions.declare_directory(ctx.attr.name)
    ctx.actions.run_shell(
        outputs = [out],
        command = """
set -eu
mkdir -p "$1/sub"
i=1
while [ "$i" -le {count} ]; do
  echo "file $i of {count}" > "$1/f$i.txt"
  i=$((i + 1))
done
echo nested > "$1/sub/nested.txt"
""".format(count = ctx.attr.count),
        arguments = [out.path],
        mnemonic = "GenDir",
        progress_message = "Generating directory %s" % out.short_path,
    )
    return [DefaultInfo(files = depset([out]))]

gen_dir = rule(
    implementation = _gen_dir_impl,
    attrs = {"count": attr.int(default = 3)},
)
