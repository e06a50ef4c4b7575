package audit

// looksLikeIDNumber reports whether s contains an 18-character resident ID
// number (GB 11643: 17 digits and a check character 0-9 or X, with a plausible
// birth date and a valid check character) standing alone, i.e. not inside a
// longer run of letters and digits. Bundles carry keyed pseudonyms only; the
// writer refuses any id field for which this is true.
func looksLikeIDNumber[T string | []byte](s T) bool {
	for i := 0; i+18 <= len(s); i++ {
		if i > 0 && isAlnum(s[i-1]) {
			continue
		}
		if i+18 < len(s) && isAlnum(s[i+18]) {
			continue
		}
		if validIDNumber(s[i : i+18]) {
			return true
		}
	}
	return false
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

var idWeights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}

// validIDNumber checks an 18-character candidate: digits, birth date
// (positions 7-14, years 1900-2099) and the ISO 7064 MOD 11-2 check character.
func validIDNumber[T string | []byte](s T) bool {
	if len(s) != 18 {
		return false
	}
	sum := 0
	for i := 0; i < 17; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		sum += int(c-'0') * idWeights[i]
	}
	num := func(a, b int) int {
		n := 0
		for _, c := range []byte(s[a:b]) {
			n = n*10 + int(c-'0')
		}
		return n
	}
	y, m, d := num(6, 10), num(10, 12), num(12, 14)
	if y < 1900 || y > 2099 || m < 1 || m > 12 || d < 1 || d > daysIn(y, m) {
		return false
	}
	check := "10X98765432"[sum%11]
	last := s[17]
	if last == 'x' {
		last = 'X'
	}
	return last == check
}

func daysIn(y, m int) int {
	switch m {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}
