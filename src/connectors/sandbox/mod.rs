//! The sandbox connector: serves every catalog integration without a real
//! provider, so integrators can reach every path. Behaviour is chosen by the
//! username; the password is always `pass_good` (anything else is
//! `invalid_credentials`):
//!
//! | username | behaviour |
//! |---|---|
//! | `user_good` (or any other) | logs in; operations succeed |
//! | `user_2fa` | asks for a second factor; the code is `123456` |
//! | `user_locked` | `account_locked` |
//! | `user_opfail` | logs in; every operation fails (`operation_failed`) |
//! | `user_slow` | logs in after 3 seconds |
//! | `user_slow_2fa` | asks for a second factor; checking the code takes 3 seconds |
//! | `user_slow_ops` | logs in; every operation takes 3 seconds |
//! | `user_large` | logs in; transaction reads return the whole `limit` asked for (up to 500, not 60) |
//! | `user_shortsession` | logs in; the provider session ends after 10 seconds |
//!
//! Data is deterministic per (integration, username). A `paymentMethod`
//! write is stored (brand and last four digits only) and shows up in later
//! reads of the same sandbox account of the same tenant. Every login and
//! code that reaches the sandbox is counted per account
//! (`sandbox_accounts.login_attempts`, `code_attempts`).

mod store;

use super::{
    Connector, ConnectorError, Credentials, Executed, LoginContext, LoginOutcome, ProviderSession,
    SessionCheck,
};
use crate::catalog::Action;
use crate::kernel::db::Db;
use chrono::{Datelike, Duration, Utc};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const PASSWORD: &str = "pass_good";
pub const SECOND_FACTOR_CODE: &str = "123456";
/// How long the slow sandbox users' slow step takes.
pub const SLOW_CALL: std::time::Duration = std::time::Duration::from_secs(3);
pub const SHORT_SESSION_SECS: i64 = 10;

#[derive(Debug, Clone)]
pub struct SandboxConnector {
    db: Db,
}

impl SandboxConnector {
    pub fn new(db: Db) -> Self {
        SandboxConnector { db }
    }
}

fn username(session: &ProviderSession) -> &str {
    session.data["username"].as_str().unwrap_or_default()
}

/// The id the sandbox gives each login's session; `None` for a session the
/// sandbox did not make.
pub fn session_id(session: &ProviderSession) -> Option<&str> {
    session.data["sandboxSession"].as_str()
}

impl SandboxConnector {
    /// Whether the session is over: its lifetime passed, or it was ended
    /// on purpose (`ResetSandboxLogin`, which only a connection's session
    /// can be: a link's flow costs no lookup).
    async fn ended(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<bool, ConnectorError> {
        if session.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Ok(true);
        }
        let (Some(_), Some(id)) = (ctx.connection_id, session_id(session)) else {
            return Ok(false);
        };
        store::session_ended(&self.db, id)
            .await
            .map_err(|_| ConnectorError::ProviderUnavailable)
    }
}

/// Ends a session the sandbox made, as a provider-side logout would;
/// `false` for a session it did not make.
pub async fn end_session(db: &Db, session: &ProviderSession) -> crate::kernel::error::Result<bool> {
    let Some(id) = session_id(session) else {
        return Ok(false);
    };
    store::end_session(db, id).await?;
    Ok(true)
}

/// A deterministic number stream for one account.
struct Seed([u8; 32], usize);

impl Seed {
    fn new(integration: &str, username: &str) -> Self {
        Seed(
            Sha256::digest(format!("{integration}/{username}")).into(),
            0,
        )
    }

    /// A number in `0..n`.
    fn next(&mut self, n: u32) -> u32 {
        let i = self.1 % 31;
        self.1 += 1;
        u32::from(u16::from_be_bytes([self.0[i], self.0[i + 1]])) % n.max(1)
    }

    fn money(&mut self, min: u32, spread: u32) -> f64 {
        f64::from(min * 100 + self.next(spread * 100)) / 100.0
    }
}

fn logged_in(username: &str, short: bool) -> LoginOutcome {
    let now = Utc::now();
    LoginOutcome::LoggedIn(ProviderSession {
        data: json!({ "username": username, "sandboxSession": crate::kernel::ids::random_hex(8) }),
        expires_at: Some(if short {
            now + Duration::seconds(SHORT_SESSION_SECS)
        } else {
            now + Duration::days(30)
        }),
    })
}

fn month_back(months: i32) -> chrono::NaiveDate {
    let today = Utc::now().date_naive();
    let total = today.year() * 12 + today.month0() as i32 - months;
    chrono::NaiveDate::from_ymd_opt(total.div_euclid(12), total.rem_euclid(12) as u32 + 1, 1)
        .expect("valid date")
}

fn int_arg(arguments: &Value, name: &str, default: u32) -> u32 {
    arguments[name].as_u64().map_or(default, |n| n as u32)
}

fn brand(card_number: &str) -> &'static str {
    match card_number.chars().next() {
        Some('4') => "visa",
        Some('5') | Some('2') => "mastercard",
        Some('3') => "amex",
        Some('6') => "discover",
        _ => "card",
    }
}

impl SandboxConnector {
    async fn stored_cards(
        &self,
        ctx: &LoginContext<'_>,
        username: &str,
    ) -> Result<Vec<Value>, ConnectorError> {
        let cards = store::cards(&self.db, ctx.tenant, &ctx.provider.id, username)
            .await
            .map_err(|_| ConnectorError::ProviderUnavailable)?;
        Ok(cards.map(|c| c.0).unwrap_or_default())
    }

    async fn payment_methods(
        &self,
        ctx: &LoginContext<'_>,
        username: &str,
    ) -> Result<Value, ConnectorError> {
        let mut seed = Seed::new(&ctx.provider.id, username);
        let stored = self.stored_cards(ctx, username).await?;
        let mut cards = vec![json!({
            "id": "pm_sandbox_default",
            "type": "card",
            "brand": "visa",
            "last4": format!("{:04}", seed.next(10_000)),
            "expirationDate": format!("{:02}/{:02}", 1 + seed.next(12), (Utc::now().year() % 100) + 2),
            "nameOnCard": "Sandbox User",
            "isDefault": !stored.iter().any(|c| c["isDefault"] == true),
        })];
        cards.extend(stored);
        Ok(Value::Array(cards))
    }

    async fn add_card(
        &self,
        ctx: &LoginContext<'_>,
        username: &str,
        args: &Value,
    ) -> Result<Value, ConnectorError> {
        let number = args["cardNumber"].as_str().unwrap_or_default();
        let make_default = args["makeDefault"].as_bool().unwrap_or(true);
        // Only what a card list may show: never the full number or the CVV.
        let card = json!({
            "id": format!("pm_sandbox_{}", crate::kernel::ids::random_hex(6)),
            "type": "card",
            "brand": brand(number),
            "last4": &number[number.len().saturating_sub(4)..],
            "expirationDate": args["expirationDate"],
            "nameOnCard": args["nameOnCard"],
            "isDefault": make_default,
        });
        // One statement, as a provider's own write would be: concurrent
        // writes each add their card.
        store::add_card(
            &self.db,
            ctx.tenant,
            &ctx.provider.id,
            username,
            &card,
            make_default,
        )
        .await
        .map_err(|_| ConnectorError::ProviderUnavailable)?;
        Ok(card)
    }

    /// Counts a login or a second-factor code reaching this provider for
    /// an account, as a real provider's own counters would.
    async fn count_attempt(
        &self,
        ctx: &LoginContext<'_>,
        username: &str,
        attempt: Attempt,
    ) -> Result<(), ConnectorError> {
        let (logins, codes) = match attempt {
            Attempt::Login => (1, 0),
            Attempt::Code => (0, 1),
        };
        store::count_attempts(
            &self.db,
            ctx.tenant,
            &ctx.provider.id,
            username,
            logins,
            codes,
        )
        .await
        .map_err(|_| ConnectorError::ProviderUnavailable)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Attempt {
    Login,
    Code,
}

fn billing(seed: &mut Seed, months: u32) -> Value {
    (0..months as i32)
        .map(|i| {
            let period = month_back(i + 1);
            let statement = month_back(i);
            let plan = seed.money(40, 40);
            let fees = seed.money(2, 8);
            json!({
                "period": period.format("%Y-%m").to_string(),
                "statementDate": statement.format("%Y-%m-%d").to_string(),
                "dueDate": (statement + Duration::days(21)).format("%Y-%m-%d").to_string(),
                "amountDue": ((plan + fees) * 100.0).round() / 100.0,
                "currency": "USD",
                "status": if i == 0 { "due" } else { "paid" },
                "lines": [
                    { "description": "Unlimited plan", "amount": plan },
                    { "description": "Taxes and fees", "amount": fees },
                ],
            })
        })
        .collect()
}

fn orders(seed: &mut Seed, limit: u32) -> Value {
    const RESTAURANTS: [&str; 5] = [
        "Pho House",
        "Burger Barn",
        "Sushi Go",
        "Taco Town",
        "Green Bowl",
    ];
    (0..limit.min(25))
        .map(|i| {
            let subtotal = seed.money(12, 30);
            let fees = seed.money(2, 5);
            let tip = seed.money(1, 6);
            json!({
                "id": format!("order_{:06}", seed.next(1_000_000)),
                "placedAt": (Utc::now() - Duration::days(i64::from(i) * 3 + 1)).format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "restaurant": RESTAURANTS[seed.next(5) as usize],
                "items": [{ "name": "Combo", "quantity": 1 + seed.next(3), "price": subtotal }],
                "subtotal": subtotal, "fees": fees, "tip": tip,
                "total": ((subtotal + fees + tip) * 100.0).round() / 100.0,
                "currency": "USD", "status": "delivered",
            })
        })
        .collect()
}

fn accounts(seed: &mut Seed) -> Value {
    json!([
        { "id": "acc_chequing", "type": "chequing", "name": "Everyday Chequing", "maskedNumber": format!("****{:04}", seed.next(10_000)),
          "currency": "CAD", "balance": seed.money(500, 4000), "availableBalance": seed.money(400, 3000) },
        { "id": "acc_savings", "type": "savings", "name": "High Interest Savings", "maskedNumber": format!("****{:04}", seed.next(10_000)),
          "currency": "CAD", "balance": seed.money(2000, 20000), "availableBalance": seed.money(2000, 20000) },
    ])
}

fn transactions(seed: &mut Seed, args: &Value, cap: u32) -> Value {
    const MERCHANTS: [&str; 6] = [
        "Grocery Mart",
        "Metro Transit",
        "Coffee Corner",
        "Hydro Utility",
        "Payroll Deposit",
        "Bookshop",
    ];
    let account = args["accountId"]
        .as_str()
        .unwrap_or("acc_chequing")
        .to_string();
    (0..int_arg(args, "limit", 50).min(cap))
        .map(|i| {
            let merchant = MERCHANTS[seed.next(6) as usize];
            let amount = if merchant == "Payroll Deposit" {
                seed.money(1500, 500)
            } else {
                -seed.money(3, 120)
            };
            json!({
                "id": format!("txn_{:08}", seed.next(100_000_000)),
                "accountId": account,
                "date": (Utc::now() - Duration::days(i64::from(i))).format("%Y-%m-%d").to_string(),
                "description": merchant, "amount": amount, "currency": "CAD",
            })
        })
        .collect()
}

fn creator(seed: &mut Seed, resource: &str, args: &Value, username: &str) -> Value {
    match resource {
        "profile" => json!({
            "id": format!("u{}", seed.next(9_000_000) + 1_000_000), "username": username, "displayName": "Sandbox Creator",
            "subscriptionPrice": 9.99, "currency": "USD", "subscriberCount": 100 + seed.next(5000),
            "postCount": seed.next(900), "joinedAt": "2021-03-14",
        }),
        "subscribers" => (0..int_arg(args, "limit", 20).min(50))
            .map(|i| json!({ "id": format!("sub_{i}"), "username": format!("fan{}", seed.next(100_000)),
                "subscribedAt": (Utc::now() - Duration::days(i64::from(seed.next(300)))).format("%Y-%m-%d").to_string(),
                "renewsAt": (Utc::now() + Duration::days(i64::from(seed.next(30)))).format("%Y-%m-%d").to_string(),
                "price": 9.99, "currency": "USD" }))
            .collect(),
        _ => (0..int_arg(args, "months", 6) as i32)
            .map(|i| {
                let (subs, tips, messages) = (seed.money(500, 3000), seed.money(50, 400), seed.money(20, 300));
                json!({ "month": month_back(i + 1).format("%Y-%m").to_string(), "subscriptions": subs, "tips": tips,
                        "messages": messages, "total": ((subs + tips + messages) * 100.0).round() / 100.0, "currency": "USD" })
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Connector for SandboxConnector {
    async fn login(
        &self,
        ctx: &LoginContext<'_>,
        credentials: &Credentials,
    ) -> Result<LoginOutcome, ConnectorError> {
        let username = credentials
            .get("username")
            .map(|s| s.expose_secret().to_string())
            .unwrap_or_default();
        let password_ok = credentials
            .get("password")
            .is_some_and(|p| p.expose_secret() == PASSWORD);
        if username.is_empty() {
            return Err(ConnectorError::InvalidCredentials);
        }
        self.count_attempt(ctx, &username, Attempt::Login).await?;
        if username == "user_slow" {
            tokio::time::sleep(SLOW_CALL).await;
        }
        if !password_ok {
            return Err(ConnectorError::InvalidCredentials);
        }
        match username.as_str() {
            "user_locked" => Err(ConnectorError::AccountLocked),
            "user_2fa" | "user_slow_2fa" => Ok(LoginOutcome::SecondFactorRequired {
                pending: ProviderSession {
                    data: json!({ "username": username }),
                    expires_at: None,
                },
                prompt: "Enter the 6-digit code sent to your phone ending in 0042.".into(),
            }),
            other => Ok(logged_in(other, other == "user_shortsession")),
        }
    }

    async fn second_factor(
        &self,
        ctx: &LoginContext<'_>,
        pending: &ProviderSession,
        code: &str,
    ) -> Result<LoginOutcome, ConnectorError> {
        self.count_attempt(ctx, username(pending), Attempt::Code)
            .await?;
        if username(pending) == "user_slow_2fa" {
            tokio::time::sleep(SLOW_CALL).await;
        }
        if code != SECOND_FACTOR_CODE {
            return Err(ConnectorError::InvalidCode);
        }
        Ok(logged_in(username(pending), false))
    }

    async fn execute(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
        resource: &str,
        action: Action,
        arguments: &Value,
    ) -> Result<Executed, ConnectorError> {
        let username = username(session);
        if self.ended(ctx, session).await? {
            return Err(ConnectorError::SessionExpired);
        }
        if username == "user_slow_ops" {
            tokio::time::sleep(SLOW_CALL).await;
        }
        if username == "user_opfail" {
            return Err(ConnectorError::OperationFailed(format!(
                "{resource} is temporarily unavailable at the provider"
            )));
        }
        let mut seed = Seed::new(&ctx.provider.id, username);
        let data = match (resource, action) {
            ("paymentMethod", Action::Read) => self.payment_methods(ctx, username).await?,
            ("paymentMethod", Action::Write) => self.add_card(ctx, username, arguments).await?,
            ("mobileBillingStatement", Action::Read) => {
                billing(&mut seed, int_arg(arguments, "months", 3))
            }
            ("orderHistory", Action::Read) => orders(&mut seed, int_arg(arguments, "limit", 20)),
            ("accounts", Action::Read) => accounts(&mut seed),
            ("transactions", Action::Read) => {
                let cap = if username == "user_large" { 500 } else { 60 };
                transactions(&mut seed, arguments, cap)
            }
            ("profile" | "subscribers" | "earnings", Action::Read) => {
                creator(&mut seed, resource, arguments, username)
            }
            _ => {
                return Err(ConnectorError::OperationFailed(format!(
                    "the sandbox has no {resource} {}",
                    action.as_str()
                )));
            }
        };
        Ok(Executed {
            data,
            renewed: None,
        })
    }

    async fn logout(
        &self,
        _ctx: &LoginContext<'_>,
        _session: &ProviderSession,
    ) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn check_session(
        &self,
        ctx: &LoginContext<'_>,
        session: &ProviderSession,
    ) -> Result<SessionCheck, ConnectorError> {
        Ok(SessionCheck {
            alive: !self.ended(ctx, session).await?,
            // Known since the login.
            expires_at: None,
        })
    }
}
