//! What a CRI mount asks of its volume (read-only, recursively or not, and
//! mount propagation), and which of those requests a pod VM can honour.

use k8s_cri::v1 as cri;

use super::mount_api::TreePropagation;

/// How much of a mount is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    No,
    /// The mount itself; mounts below it keep their own flags (a bind
    /// mount's `ro`, CRI's `readonly` alone).
    Top,
    /// Every mount of the tree (CRI's `recursive_read_only`).
    Recursive,
}

/// A mount's read-only and propagation semantics, once validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeMode {
    pub readonly: ReadOnly,
    pub propagation: TreePropagation,
}

#[derive(Debug, thiserror::Error)]
pub enum MountModeError {
    #[error("mount {index} ({path}): recursive_read_only needs readonly: true")]
    RecursiveNotReadonly { index: usize, path: String },
    #[error(
        "mount {index} ({path}): recursive_read_only needs propagation PRIVATE, not {propagation}: \
         mounts the host makes later below it would not be read-only"
    )]
    RecursiveWithPropagation {
        index: usize,
        path: String,
        propagation: &'static str,
    },
    #[error(
        "mount {index} ({path}): propagation BIDIRECTIONAL (rshared) is not supported: the container \
         runs in the pod's VM, so a mount it makes is in the VM's kernel and cannot appear on the \
         node; use PRIVATE or HOST_TO_CONTAINER (mounts the node makes below the host path do reach \
         the container)"
    )]
    Bidirectional { index: usize, path: String },
    #[error("mount {index} ({path}): unknown propagation {value}")]
    UnknownPropagation {
        index: usize,
        path: String,
        value: i32,
    },
}

impl MountModeError {
    /// The request is well formed but a VM cannot do it.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, MountModeError::Bidirectional { .. })
    }
}

impl VolumeMode {
    /// Validates mount `index` of a CreateContainer request, by kubelet's
    /// rules for recursive read-only mounts.
    pub fn of(index: usize, mount: &cri::Mount) -> Result<VolumeMode, MountModeError> {
        let path = || mount.container_path.clone();
        let propagation = match cri::MountPropagation::try_from(mount.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => TreePropagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => TreePropagation::Slave,
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                return Err(MountModeError::Bidirectional {
                    index,
                    path: path(),
                })
            }
            Err(_) => {
                return Err(MountModeError::UnknownPropagation {
                    index,
                    path: path(),
                    value: mount.propagation,
                })
            }
        };
        let readonly = match (mount.readonly, mount.recursive_read_only) {
            (false, false) => ReadOnly::No,
            (true, false) => ReadOnly::Top,
            (false, true) => {
                return Err(MountModeError::RecursiveNotReadonly {
                    index,
                    path: path(),
                })
            }
            (true, true) if propagation != TreePropagation::Private => {
                return Err(MountModeError::RecursiveWithPropagation {
                    index,
                    path: path(),
                    propagation: "HOST_TO_CONTAINER",
                })
            }
            (true, true) => ReadOnly::Recursive,
        };
        Ok(VolumeMode {
            readonly,
            propagation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(readonly: bool, rro: bool, propagation: cri::MountPropagation) -> cri::Mount {
        cri::Mount {
            container_path: "/mnt".into(),
            host_path: "/srv".into(),
            readonly,
            recursive_read_only: rro,
            propagation: propagation as i32,
            ..Default::default()
        }
    }

    #[test]
    fn plain_and_readonly_mounts_map_to_their_modes() {
        use cri::MountPropagation::*;
        let cases = [
            (
                false,
                false,
                PropagationPrivate,
                ReadOnly::No,
                TreePropagation::Private,
            ),
            (
                true,
                false,
                PropagationPrivate,
                ReadOnly::Top,
                TreePropagation::Private,
            ),
            (
                true,
                true,
                PropagationPrivate,
                ReadOnly::Recursive,
                TreePropagation::Private,
            ),
            (
                false,
                false,
                PropagationHostToContainer,
                ReadOnly::No,
                TreePropagation::Slave,
            ),
            (
                true,
                false,
                PropagationHostToContainer,
                ReadOnly::Top,
                TreePropagation::Slave,
            ),
        ];
        for (ro, rro, prop, readonly, propagation) in cases {
            assert_eq!(
                VolumeMode::of(0, &mount(ro, rro, prop)).unwrap(),
                VolumeMode {
                    readonly,
                    propagation
                },
                "readonly={ro} rro={rro} {prop:?}"
            );
        }
    }

    #[test]
    fn recursive_read_only_follows_kubelets_rules() {
        use cri::MountPropagation::*;
        let err = VolumeMode::of(2, &mount(false, true, PropagationPrivate)).unwrap_err();
        assert!(matches!(
            err,
            MountModeError::RecursiveNotReadonly { index: 2, .. }
        ));
        assert!(err.to_string().contains("needs readonly: true"), "{err}");
        let err = VolumeMode::of(0, &mount(true, true, PropagationHostToContainer)).unwrap_err();
        assert!(
            matches!(err, MountModeError::RecursiveWithPropagation { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("HOST_TO_CONTAINER"), "{err}");
        assert!(!err.is_unsupported());
        // Bidirectional is refused whatever else the mount says.
        for (ro, rro) in [(true, true), (false, false), (true, false)] {
            let err = VolumeMode::of(1, &mount(ro, rro, PropagationBidirectional)).unwrap_err();
            assert!(
                matches!(err, MountModeError::Bidirectional { index: 1, .. }),
                "{err}"
            );
            assert!(err.is_unsupported());
            assert!(
                err.to_string().contains("cannot appear on the node"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unknown_propagation_is_refused() {
        let mut m = mount(false, false, cri::MountPropagation::PropagationPrivate);
        m.propagation = 7;
        let err = VolumeMode::of(0, &m).unwrap_err();
        assert!(
            matches!(err, MountModeError::UnknownPropagation { value: 7, .. }),
            "{err}"
        );
    }
}
