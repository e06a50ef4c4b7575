package region

import (
	"errors"
	"fmt"
	"time"
)

// Shanghai is Asia/Shanghai time. China has kept UTC+8 without daylight saving
// since 1991, so a fixed zone is exact for every period this system clears and
// needs no tzdata on the host.
var Shanghai = time.FixedZone("CST", 8*3600)

// ErrBadPeriod is returned for a setlym that is not a valid YYYYMM month.
var ErrBadPeriod = errors.New("region: period must be YYYYMM (month 01-12, year 2000-2999)")

// Period is one clearing period: an Asia/Shanghai calendar month (R14),
// written setlym = YYYYMM.
type Period struct {
	Year  int
	Month time.Month
}

// ParsePeriod reads "YYYYMM".
func ParsePeriod(s string) (Period, error) {
	if len(s) != 6 {
		return Period{}, fmt.Errorf("%w: %q", ErrBadPeriod, s)
	}
	n := 0
	for i := 0; i < 6; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return Period{}, fmt.Errorf("%w: %q", ErrBadPeriod, s)
		}
		n = n*10 + int(c-'0')
	}
	y, m := n/100, n%100
	if y < 2000 || y > 2999 || m < 1 || m > 12 {
		return Period{}, fmt.Errorf("%w: %q", ErrBadPeriod, s)
	}
	return Period{Year: y, Month: time.Month(m)}, nil
}

// PeriodOf returns the period an instant belongs to (its Asia/Shanghai month).
func PeriodOf(t time.Time) Period {
	s := t.In(Shanghai)
	return Period{Year: s.Year(), Month: s.Month()}
}

// String is the setlym form, "202607".
func (p Period) String() string { return fmt.Sprintf("%04d%02d", p.Year, int(p.Month)) }

// Int is setlym as an integer (202607), the partition key in the clearing database.
func (p Period) Int() int { return p.Year*100 + int(p.Month) }

// PeriodFromInt is the inverse of Int.
func PeriodFromInt(n int) (Period, error) { return ParsePeriod(fmt.Sprintf("%06d", n)) }

// Start is the first instant of the month in Asia/Shanghai.
func (p Period) Start() time.Time { return time.Date(p.Year, p.Month, 1, 0, 0, 0, 0, Shanghai) }

// End is the first instant of the next month (exclusive end).
func (p Period) End() time.Time { return p.Next().Start() }

// Next is the following month.
func (p Period) Next() Period {
	if p.Month == time.December {
		return Period{Year: p.Year + 1, Month: time.January}
	}
	return Period{Year: p.Year, Month: p.Month + 1}
}

// Prev is the preceding month.
func (p Period) Prev() Period {
	if p.Month == time.January {
		return Period{Year: p.Year - 1, Month: time.December}
	}
	return Period{Year: p.Year, Month: p.Month - 1}
}

// Before reports whether p is an earlier month than o.
func (p Period) Before(o Period) bool { return p.Int() < o.Int() }

// CutOff is the instant after which records of this period count as late:
// month end plus the configured grace.
func (p Period) CutOff(grace time.Duration) time.Time { return p.End().Add(grace) }
