//! [`SecurityStore`] for [`PostgresStore`]: the `scram_credentials` table
//! (schema v9), `acls` and `acl_version` (v10).

use async_trait::async_trait;

use super::conn::PostgresStore;
use super::error::Step;
use super::sql::{begin_write, execute, query, query_one, query_opt};
use crate::rules::acl;
use crate::{AclBinding, AclFilter, Result, ScramCredential, SecurityStore};

const SELECT_ACLS: &str = "SELECT resource_type, resource_name, pattern_type, principal, host, \
     operation, permission FROM acls \
     ORDER BY resource_type, resource_name, pattern_type, principal, host, operation, permission";

const INSERT_ACL: &str = "INSERT INTO acls (resource_type, resource_name, pattern_type, \
     principal, host, operation, permission) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT DO NOTHING";
const DELETE_ACL: &str = "DELETE FROM acls WHERE resource_type = $1 AND resource_name = $2 \
     AND pattern_type = $3 AND principal = $4 AND host = $5 AND operation = $6 \
     AND permission = $7";

/// Run `sql` (INSERT_ACL or DELETE_ACL) with `b`'s columns; rows affected.
async fn on_binding<C: deadpool_postgres::GenericClient>(
    c: &C,
    sql: &str,
    b: &AclBinding,
) -> Step<u64> {
    execute(
        c,
        sql,
        &[
            &i16::from(b.resource_type),
            &b.resource_name,
            &i16::from(b.pattern_type),
            &b.principal,
            &b.host,
            &i16::from(b.operation),
            &i16::from(b.permission),
        ],
    )
    .await
}

fn acl_row(r: &tokio_postgres::Row) -> Step<AclBinding> {
    let code = |i: usize| -> Step<i8> { Ok(r.try_get::<_, i16>(i)? as i8) };
    Ok(AclBinding {
        resource_type: code(0)?,
        resource_name: r.try_get(1)?,
        pattern_type: code(2)?,
        principal: r.try_get(3)?,
        host: r.try_get(4)?,
        operation: code(5)?,
        permission: code(6)?,
    })
}

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

    async fn create_acls(&self, acls: &[AclBinding]) -> Result<()> {
        self.run("create_acls", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let mut added = 0;
            for b in acls {
                added += on_binding(&tx, INSERT_ACL, b).await?;
            }
            if added > 0 {
                execute(&tx, "UPDATE acl_version SET version = version + 1", &[]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn delete_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>> {
        self.run("delete_acls", move || async move {
            let mut client = self.client().await?;
            let tx = begin_write(&mut client).await?;
            let all = query(&tx, SELECT_ACLS, &[])
                .await?
                .iter()
                .map(acl_row)
                .collect::<Step<Vec<_>>>()?;
            let mut removed = Vec::new();
            for b in all.into_iter().filter(|b| acl::matches(filter, b)) {
                let n = on_binding(&tx, DELETE_ACL, &b).await?;
                // A concurrent delete may have taken it first.
                if n > 0 {
                    removed.push(b);
                }
            }
            if !removed.is_empty() {
                execute(&tx, "UPDATE acl_version SET version = version + 1", &[]).await?;
            }
            tx.commit().await?;
            Ok(removed)
        })
        .await
    }

    async fn list_acls(&self) -> Result<Vec<AclBinding>> {
        self.run("list_acls", move || async move {
            let client = self.client().await?;
            query(&client, SELECT_ACLS, &[])
                .await?
                .iter()
                .map(acl_row)
                .collect()
        })
        .await
    }

    async fn acl_version(&self) -> Result<i64> {
        self.run("acl_version", move || async move {
            let client = self.client().await?;
            let row = query_one(&client, "SELECT version FROM acl_version", &[]).await?;
            Ok(row.try_get::<_, i64>(0)?)
        })
        .await
    }
}
