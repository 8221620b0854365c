from __future__ import annotations

from pathlib import Path

import click


@click.command("sign")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), help="ed25519 private key (PEM).")
@click.option("--generate-key", "generate", type=click.Path(path_type=Path), default=None,
              help="Write a new key pair to PATH (private) and PATH.pub (public), then exit.")
def command(files, key, generate):
    """Sign artefacts (or engines) with an ed25519 key: writes FILE.sig beside each file.

    Devices verify on load when a public key is configured (Detector.load(..., public_key=...) or
    ADTK_PUBLIC_KEY=path). Needs the `cryptography` package (pip install adtk[sign]).
    """
    from adtk.runtime.artefact import read_artefact
    from adtk.runtime.errors import ConfigError
    from adtk.runtime.signing import generate_key_pair, sign_file

    if generate is not None:
        key_id = generate_key_pair(generate, Path(str(generate) + ".pub"))
        click.echo(f"wrote {generate} (private, keep it off the devices) and {generate}.pub (public); key id {key_id}")
        return
    if key is None or not files:
        raise ConfigError("adtk sign FILE... --key PRIVATE.pem (or --generate-key PATH to make a key pair)")
    for path in files:
        if path.suffix == ".onnx":
            read_artefact(path)  # never sign a damaged artefact
        click.echo(f"signed {path} -> {sign_file(path, key)}")
