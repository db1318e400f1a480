#!/usr/bin/env bash
# Writes hotpatch(1) in roff to stdout, generated from `hotpatch --help` and each command's --help:
#   deploy/debian/manpage.sh node dist/src/cli/main.js > hotpatch.1
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND... (e.g. node dist/src/cli/main.js)" >&2; exit 2; }
cli=("$@")
export COLUMNS=78
version="$("${cli[@]}" --version)"
# roff: backslashes, leading dots/quotes, and minus signs of options.
esc() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/" -e 's/-/\\-/g'; }
commands="$("${cli[@]}" --help | awk '/^Commands:/{on=1; next} on && /^$/{exit} on && /^  [a-z]/{print $1}' | grep -v '^help$')"
cat <<HEAD
.TH HOTPATCH 1 "" "hotpatch $version" "User Commands"
.SH NAME
hotpatch \\- live patching and patch protection for running Linux x86\\-64 processes
.SH SYNOPSIS
.B hotpatch
.I COMMAND
.RI [ OPTIONS ]
.SH DESCRIPTION
HEAD
"${cli[@]}" --help | esc | sed -e '1{/^Usage:/d}' | awk 'BEGIN{print ".nf"} {print} END{print ".fi"}'
echo '.SH COMMANDS'
for c in $commands; do
  echo ".SS hotpatch $c"
  "${cli[@]}" "$c" --help | esc | awk 'BEGIN{print ".nf"} {print} END{print ".fi"}'
done
cat <<'TAIL'
.SH EXIT STATUS
0 success (verify: no findings); 1 error; 2 usage; 3 refused (nothing changed); 4 partial
(\-\-all where some processes failed); 5 findings (verify).
.SH FILES
.TP
.I /etc/hotpatch/trusted.d/*.pub
trusted patch signers (unless \-\-trust or HOTPATCH_TRUSTED_KEYS say otherwise)
.TP
.I /etc/hotpatch/guard.json
the guard service's policy (reloaded on SIGHUP: systemctl reload hotpatch\-guard)
.TP
.I /var/lib/hotpatch/guard
the guard's state directory
.TP
.I /var/log/hotpatch/guard.jsonl
the guard service's JSON log
.SH SEE ALSO
/usr/share/doc/hotpatch/user\-guide.md, /usr/share/doc/hotpatch/guard.md,
systemctl(1), journalctl(1)
TAIL
