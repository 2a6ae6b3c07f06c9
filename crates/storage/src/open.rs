//! Build the object store from a URL.
//!
//! `file:///abs/dir` (created if missing), `memory://`, and
//! `s3://bucket/prefix` (AWS settings from the standard `AWS_*` environment;
//! `endpoint`, `region`, `allow_http` and `path_style` may be given as query
//! parameters for MinIO and LocalStack, e.g.
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&path_style=true`).

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

use crate::StorageError;

/// A parsed object-store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    File(std::path::PathBuf),
    Memory,
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
        allow_http: bool,
        path_style: bool,
    },
}

impl ObjectStoreUrl {
    /// Parse `file://`, `memory://` or `s3://` URLs.
    pub fn parse(raw: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: raw.to_string(),
            reason: reason.to_string(),
        };
        if raw == "memory://" || raw == "memory:///" {
            return Ok(Self::Memory);
        }
        if let Some(path) = raw.strip_prefix("file://") {
            if path.is_empty() {
                return Err(invalid("file:// needs a path"));
            }
            return Ok(Self::File(path.into()));
        }
        let url = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
        if url.scheme() != "s3" {
            return Err(invalid("scheme must be file, memory or s3"));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid("s3 url needs a bucket"))?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let mut endpoint = None;
        let mut region = None;
        let mut allow_http = false;
        let mut path_style = false;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "endpoint" => {
                    allow_http |= v.starts_with("http://");
                    endpoint = Some(v.to_string());
                }
                "region" => region = Some(v.to_string()),
                "allow_http" => allow_http = v == "true",
                "path_style" => path_style = v == "true",
                other => return Err(invalid(&format!("unknown option {other}"))),
            }
        }
        Ok(Self::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            allow_http,
            path_style,
        })
    }
}

/// Open the object store a URL names.
pub fn open_object_store(raw: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let setup = |source| StorageError::Setup {
        url: raw.to_string(),
        source,
    };
    match ObjectStoreUrl::parse(raw)? {
        ObjectStoreUrl::Memory => Ok(Arc::new(InMemory::new())),
        ObjectStoreUrl::File(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| StorageError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(setup)?
                .with_automatic_cleanup(true);
            Ok(Arc::new(fs))
        }
        ObjectStoreUrl::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            allow_http,
            path_style,
        } => {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&bucket)
                .with_allow_http(allow_http)
                .with_virtual_hosted_style_request(!path_style);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = region {
                builder = builder.with_region(region);
            }
            let s3 = builder.build().map_err(setup)?;
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix.as_str())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            ObjectStoreUrl::parse("memory://").expect("memory"),
            ObjectStoreUrl::Memory
        );
        assert_eq!(
            ObjectStoreUrl::parse("file:///tmp/x").expect("file"),
            ObjectStoreUrl::File("/tmp/x".into())
        );
        let s3 = ObjectStoreUrl::parse(
            "s3://bkt/a/b?endpoint=http://127.0.0.1:9000&path_style=true&region=us-east-1",
        )
        .expect("s3");
        assert_eq!(
            s3,
            ObjectStoreUrl::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                path_style: true,
            }
        );
        assert!(ObjectStoreUrl::parse("gs://x").is_err());
        assert!(ObjectStoreUrl::parse("s3://b?bogus=1").is_err());
    }
}
