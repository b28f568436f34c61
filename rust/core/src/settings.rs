//! Configs whose fields are read and set by name: the DDR4 model's and the RecNMP emulator's.
//! Each field and its default is defined once, in its config's struct and `Default`; the
//! binding reads the names and defaults from here (`Settings::settings`) and sets what a
//! caller gives (`Settings::set`), so no other layer restates them.

use crate::error::{Error, Result};

/// A setting's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Bool(bool),
}

/// A config whose fields are read and set by name.
pub trait Settings {
    /// What the config is called in messages ("DRAM", "NMP").
    const WHAT: &'static str;
    /// Every field's name and value, in a fixed order.
    fn settings(&self) -> Vec<(&'static str, Value)>;
    /// Set field `name` to `value` (converted to the field's type; an error names an unknown
    /// field or a value of the wrong kind).
    fn set(&mut self, name: &str, value: Value) -> Result<()>;
}

/// Conversions of a [`Value`] to a field's type.
pub(crate) trait FromValue: Sized {
    fn from_value(name: &str, v: Value) -> Result<Self>;
    fn to_value(self) -> Value;
}

impl FromValue for u64 {
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::Int(x) => Ok(x),
            _ => Err(Error::value(format!("{name} takes a non-negative integer, got {v:?}"))),
        }
    }
    fn to_value(self) -> Value {
        Value::Int(self)
    }
}

impl FromValue for usize {
    fn from_value(name: &str, v: Value) -> Result<Self> {
        usize::try_from(u64::from_value(name, v)?).map_err(|_| Error::value(format!("{name} is too large")))
    }
    fn to_value(self) -> Value {
        Value::Int(self as u64)
    }
}

impl FromValue for f64 {
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::Float(x) => Ok(x),
            Value::Int(x) => Ok(x as f64),
            Value::Bool(_) => Err(Error::value(format!("{name} takes a number, got {v:?}"))),
        }
    }
    fn to_value(self) -> Value {
        Value::Float(self)
    }
}

impl FromValue for bool {
    fn from_value(name: &str, v: Value) -> Result<Self> {
        match v {
            Value::Bool(x) => Ok(x),
            _ => Err(Error::value(format!("{name} takes true or false, got {v:?}"))),
        }
    }
    fn to_value(self) -> Value {
        Value::Bool(self)
    }
}

/// Implement [`Settings`] for a config from the list of its fields (paths into the struct).
macro_rules! settings {
    ($t:ty, $what:literal, [$($name:ident => $($path:ident).+),* $(,)?] $(, rest: $rest:ident)?) => {
        impl $crate::settings::Settings for $t {
            const WHAT: &'static str = $what;

            fn settings(&self) -> Vec<(&'static str, $crate::settings::Value)> {
                #[allow(unused_mut)]
                let mut out = vec![$((stringify!($name), $crate::settings::FromValue::to_value(self.$($path).+))),*];
                $(out.extend(self.$rest.settings());)?
                out
            }

            fn set(&mut self, name: &str, value: $crate::settings::Value) -> $crate::error::Result<()> {
                match name {
                    $(stringify!($name) => {
                        self.$($path).+ = $crate::settings::FromValue::from_value(name, value)?;
                        Ok(())
                    })*
                    _ => {
                        $(return self.$rest.set(name, value);)?
                        #[allow(unreachable_code)]
                        Err($crate::error::Error::value(format!("unknown {} setting {name:?}", $what)))
                    }
                }
            }
        }
    };
}
pub(crate) use settings;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dram::Config;
    use crate::nmp::NmpConfig;

    #[test]
    fn every_field_round_trips_and_unknown_ones_are_refused() {
        let mut c = Config::default();
        let all = c.settings();
        assert_eq!(all.len(), 21);
        assert_eq!(all[0], ("channels", Value::Int(4)));
        c.set("tck_ns", Value::Float(1.25)).unwrap();
        c.set("channels", Value::Int(2)).unwrap();
        assert_eq!((c.timing.tck_ns, c.channels), (1.25, 2));
        assert!(c.set("voltage", Value::Int(1)).unwrap_err().to_string().contains("unknown DRAM setting \"voltage\""));
        assert!(c.set("channels", Value::Float(1.5)).is_err());
        let mut n = NmpConfig::default();
        let names: Vec<_> = n.settings().into_iter().map(|(k, _)| k).collect();
        assert!(names.contains(&"act_pj") && names.contains(&"trcd") && names.contains(&"table_aware"));
        n.set("trcd", Value::Int(20)).unwrap();
        n.set("table_aware", Value::Bool(false)).unwrap();
        assert_eq!((n.dram.timing.trcd, n.table_aware), (20, false));
        assert!(n.set("voltage", Value::Int(1)).is_err());
    }
}
