//! CRI ImageService over the image store.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService as CriImageService;
use tonic::{Request, Response, Status};

use crate::container::ContainerManager;
use crate::image::{Credentials, Image, ImageService};

pub struct Images {
    pub images: ImageService,
    pub containers: Arc<ContainerManager>,
}

fn image_name(spec: Option<&cri::ImageSpec>, call: &str) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(name) if !name.is_empty() => Ok(name.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "{call}: image.image is empty"
        ))),
    }
}

fn to_cri(image: &Image) -> cri::Image {
    let (uid, username) = image.uid_and_username();
    cri::Image {
        id: image.id.clone(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl CriImageService for Images {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match filter {
            Some(name) => self.images.status(&name)?.iter().map(to_cri).collect(),
            None => self.images.list().iter().map(to_cri).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "ImageStatus")?;
        let image = self.images.status(&name)?;
        let mut info = HashMap::new();
        if let (true, Some(image)) = (req.verbose, &image) {
            let json = serde_json::json!({
                "manifestDigest": image.manifest_digest,
                "layers": image.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
                "config": {
                    "user": image.config.user,
                    "env": image.config.env,
                    "entrypoint": image.config.entrypoint,
                    "cmd": image.config.cmd,
                    "workingDir": image.config.working_dir,
                },
            });
            info.insert("info".to_string(), json.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: image.as_ref().map(to_cri),
            info,
        }))
    }

    #[tracing::instrument(skip_all, fields(image = tracing::field::Empty))]
    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref(), "PullImage")?;
        tracing::Span::current().record("image", name.as_str());
        let credentials = req.auth.map(|a| Credentials {
            username: a.username,
            password: a.password,
            auth: a.auth,
            server_address: a.server_address,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        let image = self.images.pull(&name, credentials.as_ref()).await?;
        Ok(Response::new(cri::PullImageResponse {
            image_ref: image.id,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let name = image_name(req.get_ref().image.as_ref(), "RemoveImage")?;
        let containers = self.containers.clone();
        self.images
            .remove(&name, move |id| containers.user_of_image(id))
            .await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let fs = self.images.fs_info().await?;
        let usage = cri::FilesystemUsage {
            timestamp: fs.timestamp_nanos,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: fs.mountpoint.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: fs.used_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: fs.inodes_used,
            }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            // Writable layers live in guest memory, not on a host fs.
            container_filesystems: vec![],
        }))
    }
}
