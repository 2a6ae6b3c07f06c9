//! [`SecurityStore`] for [`PostgresStore`]: the `scram_credentials` table
//! (schema v9).

use async_trait::async_trait;

use super::conn::PostgresStore;
use super::error::Step;
use super::sql::{execute, query, query_opt};
use crate::{Result, ScramCredential, SecurityStore};

#[async_trait]
impl SecurityStore for PostgresStore {
    async fn put_scram_credential(&self, user: &str, credential: &ScramCredential) -> Result<()> {
        let c = credential;
        self.run("put_scram_credential", move || async move {
            let client = self.client().await?;
            execute(
                &client,
                "INSERT INTO scram_credentials \
                     (user_name, mechanism, salt, stored_key, server_key, iterations) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (user_name, mechanism) DO UPDATE SET salt = EXCLUDED.salt, \
                     stored_key = EXCLUDED.stored_key, server_key = EXCLUDED.server_key, \
                     iterations = EXCLUDED.iterations",
                &[
                    &user,
                    &c.mechanism,
                    &c.salt,
                    &c.stored_key,
                    &c.server_key,
                    &c.iterations,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn delete_scram_credential(&self, user: &str, mechanism: &str) -> Result<bool> {
        self.run("delete_scram_credential", move || async move {
            let client = self.client().await?;
            let n = execute(
                &client,
                "DELETE FROM scram_credentials WHERE user_name = $1 AND mechanism = $2",
                &[&user, &mechanism],
            )
            .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn scram_credential(
        &self,
        user: &str,
        mechanism: &str,
    ) -> Result<Option<ScramCredential>> {
        self.run("scram_credential", move || async move {
            let client = self.client().await?;
            let row = query_opt(
                &client,
                "SELECT salt, stored_key, server_key, iterations FROM scram_credentials \
                 WHERE user_name = $1 AND mechanism = $2",
                &[&user, &mechanism],
            )
            .await?;
            row.map(|r| -> Step<ScramCredential> {
                Ok(ScramCredential {
                    mechanism: mechanism.to_owned(),
                    salt: r.try_get(0)?,
                    stored_key: r.try_get(1)?,
                    server_key: r.try_get(2)?,
                    iterations: r.try_get(3)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn list_scram_credentials(&self) -> Result<Vec<(String, String, i32)>> {
        self.run("list_scram_credentials", move || async move {
            let client = self.client().await?;
            query(
                &client,
                "SELECT user_name, mechanism, iterations FROM scram_credentials \
                 ORDER BY user_name, mechanism",
                &[],
            )
            .await?
            .iter()
            .map(|r| -> Step<(String, String, i32)> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            })
            .collect()
        })
        .await
    }
}
