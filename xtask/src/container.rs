//! `cargo xtask container`: the privileged-container image of `lb-ctl`, built from the
//! binary this workspace builds (no toolchain inside the image) on a Debian base.
//!
//! The base is the public `debian:<codename>-slim` image when a registry answers, else a
//! local one made with debootstrap from Debian's package archive, so the image builds on
//! machines that reach Debian's mirror but no container registry. The codename is the build
//! host's: the binary links the host's glibc, and an older base could lack its symbols.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use crate::{
    bootstrap::{self, Group},
    build,
    process::{Cmd, fmt_duration, lb_ctl_path, target_dir, workspace_root},
};

/// The image `cargo xtask test` builds from the debug binary for the container tests.
pub const TEST_IMAGE: &str = "localhost/lb-ctl:test";
/// Tells the container tests which image to run.
pub const TEST_IMAGE_VAR: &str = "LB_TEST_IMAGE";
/// The Debian mirror debootstrap fetches from when a local base is needed.
const MIRROR_VAR: &str = "LB_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// How long a registry gets to answer a pull before the local base is used instead.
const PULL_TIMEOUT_S: u32 = 120;

#[derive(clap::Args)]
pub struct ContainerArgs {
    /// Base image (default: docker.io/library/debian:<host codename>-slim if a registry
    /// answers, else a local Debian base made with debootstrap).
    #[arg(long, value_name = "IMAGE")]
    base: Option<String>,
    /// Image name (default: localhost/lb-ctl:<version>, also tagged :latest).
    #[arg(long, value_name = "NAME")]
    tag: Option<String>,
    /// Put the debug build in the image instead of the release build.
    #[arg(long)]
    debug: bool,
}

fn say(line: impl AsRef<str>) {
    println!("[container] {}", line.as_ref());
}

pub fn container(args: &ContainerArgs) -> anyhow::Result<()> {
    bootstrap::bootstrap(&[Group::Build, Group::Container])?;
    let lb_ctl = build::build(!args.debug)?;
    let version = binary_version(&lb_ctl)?;
    let tags = match &args.tag {
        Some(tag) => vec![tag.clone()],
        None => vec![
            format!("localhost/lb-ctl:{version}"),
            "localhost/lb-ctl:latest".to_owned(),
        ],
    };
    build_image(&lb_ctl, args.base.as_deref(), &tags)?;
    println!("image: {}", tags.join(", "));
    Ok(())
}

/// The test image of `cargo xtask test`: the debug lb-ctl, already built, on the same base
/// the release image would get.
pub fn build_test_image() -> anyhow::Result<()> {
    build_image(&lb_ctl_path(false), None, &[TEST_IMAGE.to_owned()])
}

/// Builds deploy/Containerfile with `lb_ctl` (stripped of debug info) as the context.
fn build_image(lb_ctl: &Path, base: Option<&str>, tags: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure!(
        lb_ctl.is_file(),
        "no {} to put in the image",
        lb_ctl.display()
    );
    let base = match base {
        Some(base) => base.to_owned(),
        None => default_base()?,
    };
    // Only the binary goes into the context: the image holds nothing of the build.
    let context = target_dir().join("container").join("context");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("emptying {}", context.display()))?;
    }
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    Cmd::new("objcopy")
        .arg("--strip-debug")
        .arg(lb_ctl)
        .arg(context.join("lb-ctl"))
        .run()?;
    let mut cmd = Cmd::new("podman")
        .args(["build", "--file"])
        .arg(workspace_root().join("deploy").join("Containerfile"))
        .arg("--build-arg")
        .arg(format!("BASE_IMAGE={base}"));
    for tag in tags {
        cmd = cmd.args(["--tag", tag]);
    }
    cmd.arg(&context).run()?;
    say(format!(
        "built {} on {base} in {}",
        tags.join(", "),
        fmt_duration(started.elapsed())
    ));
    Ok(())
}

/// `lb-ctl 0.1.0` → `0.1.0`.
fn binary_version(lb_ctl: &Path) -> anyhow::Result<String> {
    let out = Cmd::new(lb_ctl).arg("--version").read()?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("`{} --version` printed {out:?}", lb_ctl.display()))
}

/// The public Debian image of the host's release if present or pullable, else the local
/// debootstrapped base (made once, then reused).
fn default_base() -> anyhow::Result<String> {
    let codename = host_codename()?;
    let public = format!("docker.io/library/debian:{codename}-slim");
    if image_exists(&public)? {
        say(format!("base image {public}: present"));
        return Ok(public);
    }
    say(format!(
        "base image {public}: pulling (at most {PULL_TIMEOUT_S} s)"
    ));
    let pulled = Cmd::new("timeout")
        .arg(PULL_TIMEOUT_S.to_string())
        .args(["podman", "pull", "--quiet", &public])
        .into_command()
        .output()
        .context("running podman pull")?;
    if pulled.status.success() {
        return Ok(public);
    }
    let why = String::from_utf8_lossy(&pulled.stderr);
    say(format!(
        "no registry answered ({}); using a local Debian base instead",
        why.lines().last().unwrap_or("no message").trim()
    ));
    let local = format!("localhost/lb-ctl-base:{codename}");
    if image_exists(&local)? {
        say(format!("base image {local}: present"));
    } else {
        debootstrap_base(&codename, &local)?;
    }
    Ok(local)
}

fn image_exists(name: &str) -> anyhow::Result<bool> {
    match Cmd::new("podman").args(["image", "exists", name]).probe()? {
        Some((status, _)) => Ok(status.success()),
        None => bail!("podman is not installed (`cargo xtask setup --with container`)"),
    }
}

/// VERSION_CODENAME of /etc/os-release (`bookworm`).
fn host_codename() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    codename_of(&text).context(
        "/etc/os-release names no VERSION_CODENAME: not a Debian host? Give a base image with \
         --base",
    )
}

fn codename_of(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_CODENAME=")?.trim_matches('"');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// A minimal Debian root file system, made from the package archive and imported as an
/// image: what `debian:<codename>-slim` is, minus the registry.
fn debootstrap_base(codename: &str, name: &str) -> anyhow::Result<()> {
    let mirror = std::env::var(MIRROR_VAR).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    let work = target_dir().join("container").join("base");
    let rootfs = work.join("rootfs");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    say(format!(
        "making base image {name} with debootstrap from {mirror} (about a minute; \
         {MIRROR_VAR} names another mirror)"
    ));
    Cmd::new("debootstrap")
        .args(["--variant=minbase", codename])
        .arg(&rootfs)
        .arg(&mirror)
        .run()?;
    // What the -slim images leave out too: package caches, documentation, translations.
    for dir in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ] {
        empty_dir(&rootfs.join(dir))?;
    }
    let tarball = work.join("rootfs.tar");
    Cmd::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .run()?;
    Cmd::new("podman")
        .args(["import", "--change", "CMD [\"/bin/bash\"]"])
        .arg(&tarball)
        .arg(name)
        .run()?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// Removes what `dir` holds, keeping `dir`.
fn empty_dir(dir: &PathBuf) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let removed = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::codename_of;

    #[test]
    fn the_codename_comes_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\n\
                    VERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(codename_of(text).as_deref(), Some("bookworm"));
        assert_eq!(codename_of("ID=debian\nVERSION_CODENAME=\n"), None);
        assert_eq!(codename_of("ID=alpine\n"), None);
    }
}
