from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("flash")
@click.argument("args", nargs=-1, required=True)
@click.option("--rollback", is_flag=True, help="Restore the previous artefact at every DEST (no MODEL argument).")
@click.option("--name", default="model.onnx", show_default=True, help="File name of the artefact on the device.")
@click.option("-i", "--identity", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="ssh private key for ssh:// destinations.")
@click.option("--ssh-option", "ssh_options", multiple=True, help="Extra `ssh -o KEY=VALUE` (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document.")
@click.option("--public-key", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="ed25519 public key (PEM): refuse to send (or roll back to) an artefact whose .sig does not "
                   "verify (else $ADTK_PUBLIC_KEY).")
def command(args, rollback, name, identity, ssh_options, as_json, public_key):
    """Install MODEL at each DEST: `adtk flash MODEL DEST...`; or `adtk flash --rollback DEST...`.

    \b
    DEST: a folder, or ssh://[user@]host[:port]/absolute/folder. There MODEL becomes <name>; the file it
    replaces is kept as <name without .onnx>.previous.onnx; MODEL.sig, when present, travels with it as
    <name>.sig. Copied to a temporary name, sha256 checked on the device, renamed into place atomically.
    Rollback verifies the previous artefact (and its signature, with a key) before swapping. Exit status: 0 if every DEST succeeded, 1 otherwise.
    JSON: {"results": [{"destination": str, "ok": bool, "message": str, "sha256": str | null}],
           "succeeded": int, "failed": int}
    """
    import json

    from adtk.runtime.flash import flash, rollback as rollback_all

    options = tuple(f"-o{option}" for option in ssh_options) + (("-i", str(identity)) if identity else ())
    if rollback:
        results = rollback_all(list(args), name=name, ssh_options=options, public_key=public_key)
    else:
        if len(args) < 2:
            raise click.UsageError("expected MODEL and at least one DEST (or --rollback DEST...)")
        results = flash(args[0], list(args[1:]), name=name, ssh_options=options, public_key=public_key)
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps({"results": [r.__dict__ for r in results], "succeeded": len(results) - len(failed),
                               "failed": len(failed)}, indent=2))
    else:
        for result in results:
            click.echo(f"{'ok    ' if result.ok else 'FAILED'}  {result.destination}: {result.message}")
        click.echo(f"{len(results) - len(failed)} of {len(results)} destinations succeeded")
    sys.exit(1 if failed else 0)
