//! TURN beside rtcgate: a real coturn with the TURN REST scheme (`use-auth-secret`), the server
//! whose credentials rtcgate is to mint (issue 20). Here, the harness: coturn allocates for
//! credentials made from its secret, and refuses a wrong password and expired credentials.
//! Skipped with a note where coturn is not installed; required under `CI=true`.

use crate::support::*;

#[tokio::test]
async fn coturn_allocates_for_rest_credentials_and_refuses_others() {
    let Some(turn) = Coturn::start().await else {
        return;
    };
    let (user, password) = turn.credentials("alice", 3600);
    turn.allocate(&user, &password)
        .await
        .unwrap_or_else(|e| panic!("{user} was refused:\n{e}\n{}", turn.log()));
    assert!(
        turn.allocate(&user, "not-the-password").await.is_err(),
        "a wrong password was allowed"
    );
    let (old, old_password) = turn.credentials("alice", -60);
    assert!(
        turn.allocate(&old, &old_password).await.is_err(),
        "expired credentials were allowed"
    );
}
