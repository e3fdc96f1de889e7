//! What the AWS upstreams (Bedrock, SageMaker) share: SigV4 signing with the AWS SDK's own signer
//! (`aws-sigv4`), from static keys or the SDK's standard credential chain (`aws-config`).

use std::time::SystemTime;

use bytes::Bytes;
use http::Request;
use weir_config::AwsCredentials;

use crate::error::Error;

/// Signs requests for one AWS service in one region.
#[derive(Debug)]
pub(crate) struct SigV4 {
    region: String,
    /// The signing name: `bedrock`, `sagemaker`.
    service: &'static str,
    signing: Signing,
}

/// Where the SigV4 credentials come from.
#[derive(Debug)]
enum Signing {
    /// A Bedrock API key, already a static bearer header: nothing to sign.
    None,
    Static(aws_credential_types::Credentials),
    Chain(Box<CredentialChain>),
}

/// The standard AWS credential chain, built on first use (it may ask an instance metadata or
/// container endpoint), and the credentials it last gave, reused until five minutes before they
/// expire. The chain reads the environment and `~/.aws` by design: that is what it is for.
#[derive(Debug)]
struct CredentialChain {
    profile: Option<String>,
    credentials_file: Option<std::path::PathBuf>,
    provider: tokio::sync::OnceCell<aws_credential_types::provider::SharedCredentialsProvider>,
    cached: tokio::sync::Mutex<Option<aws_credential_types::Credentials>>,
}

/// How long before their expiry temporary credentials are replaced.
const REFRESH_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

impl SigV4 {
    pub fn new(settings: &weir_config::Aws, service: &'static str) -> Self {
        let signing = match &settings.credentials {
            AwsCredentials::ApiKey(_) => Signing::None,
            AwsCredentials::Static { access_key_id, secret_access_key, session_token } => {
                Signing::Static(aws_credential_types::Credentials::new(
                    access_key_id,
                    secret_access_key.expose(),
                    session_token.as_ref().map(|t| t.expose().to_owned()),
                    None,
                    "weir-config",
                ))
            }
            AwsCredentials::Chain { profile, credentials_file } => Signing::Chain(Box::new(CredentialChain {
                profile: profile.clone(),
                credentials_file: credentials_file.clone(),
                provider: tokio::sync::OnceCell::new(),
                cached: tokio::sync::Mutex::new(None),
            })),
        };
        Self { region: settings.region.clone(), service, signing }
    }

    /// Adds the SigV4 headers to `request` (body included in the signature), marked sensitive.
    pub async fn sign(&self, upstream: &str, request: &mut Request<Bytes>) -> Result<(), Error> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let credentials = match &self.signing {
            Signing::None => return Ok(()),
            Signing::Static(credentials) => credentials.clone(),
            // Boxed: the chain's first run (aws-config's loader) is a large future, and it would
            // otherwise be part of every request's future.
            Signing::Chain(chain) => Box::pin(chain.credentials(upstream, &self.region)).await?,
        };
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(self.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| super::credentials_failed(upstream, "SigV4 parameters are incomplete", false).source(e))?
            .into();
        let uri = request.uri().to_string();
        let headers: Vec<(&str, &str)> =
            request.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))).collect();
        let signable = SignableRequest::new("POST", &uri, headers.into_iter(), SignableBody::Bytes(request.body()))
            .map_err(|e| Error::internal("the request cannot be signed").source(e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Error::internal("the request cannot be signed").source(e))?
            .into_parts();
        let mut signed = Request::new(());
        instructions.apply_to_request_http1x(&mut signed);
        for (name, value) in signed.headers() {
            let mut value = value.clone();
            value.set_sensitive(true);
            request.headers_mut().insert(name, value);
        }
        Ok(())
    }
}

impl CredentialChain {
    async fn credentials(&self, upstream: &str, region: &str) -> Result<aws_credential_types::Credentials, Error> {
        use aws_credential_types::provider::ProvideCredentials;
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = &*cached
            && credentials.expiry().is_none_or(|at| at > SystemTime::now() + REFRESH_AHEAD)
        {
            return Ok(credentials.clone());
        }
        let provider = self
            .provider
            .get_or_try_init(|| async {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_owned()));
                if let Some(profile) = &self.profile {
                    loader = loader.profile_name(profile);
                }
                if let Some(file) = &self.credentials_file {
                    use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
                    let files = EnvConfigFiles::builder()
                        .include_default_config_file(false)
                        .include_default_credentials_file(false)
                        .with_file(EnvConfigFileKind::Credentials, file)
                        .build();
                    loader = loader.profile_files(files);
                }
                loader
                    .load()
                    .await
                    .credentials_provider()
                    .ok_or_else(|| super::credentials_failed(upstream, "the AWS credential chain is empty", false))
            })
            .await?;
        let credentials = provider.provide_credentials().await.map_err(|e| {
            super::credentials_failed(upstream, "the AWS credential chain found no usable credentials", true).source(e)
        })?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }
}
