(function(){
const R=window.DCT_REPORT, el=document.getElementById('classtable'); if(!R||!el) return;
const hasE=R.classes.some(c=>c.e1d!=null), PAGE=100;
const f=x=>x==null?'–':x.toFixed(2), up=(c,w)=>(c[w+'1d']==null||c[w+'1b']==null)?null:c[w+'1d']-c[w+'1b'];
const cols=[['id','id',c=>c.id],['class','name',c=>c.name],['status','status',c=>c.status],
 ['guide top-1 baseline → DCT','g',c=>c.g1d],['guide uplift','gu',c=>up(c,'g')]]
 .concat(hasE?[['evaluator top-1 baseline → DCT','e',c=>c.e1d],['evaluator uplift','eu',c=>up(c,'e')]]:[])
 .concat([['epochs','ep',c=>c.ep]]);
let rows=R.classes.slice(), sortI=0, dir=1, page=0;
const q=document.getElementById('classsearch'), info=document.getElementById('classinfo');
function render(){
 const t=(q.value||'').trim().toLowerCase();
 let sel=t?rows.filter(c=>String(c.id)===t||c.name.toLowerCase().includes(t)||c.status.includes(t)):rows;
 const key=cols[sortI][2];
 sel=sel.slice().sort((a,b)=>{const x=key(a),y=key(b);if(x==null&&y==null)return a.id-b.id;if(x==null)return 1;
  if(y==null)return -1;return (x<y?-1:x>y?1:a.id-b.id)*dir;});
 const pages=Math.max(1,Math.ceil(sel.length/PAGE)); page=Math.min(page,pages-1);
 const tb=document.createElement('tbody');
 for(const c of sel.slice(page*PAGE,page*PAGE+PAGE)){
  const tr=document.createElement('tr');
  const cell=(txt,cls)=>{const td=document.createElement('td');td.textContent=txt;
   if(cls)td.className=cls;tr.appendChild(td);return td;};
  const a=document.createElement('a'); a.href='class.html#c'+c.id; a.textContent=c.id;
  const td0=cell('', 'num'); td0.appendChild(a);
  cell(c.name); cell(c.status+(c.earlier?' (earlier run)':''), (c.status==='failed'||c.status==='no record')?'bad':'');
  for(const w of hasE?['g','e']:['g']){const u=up(c,w);
   cell(f(c[w+'1b'])+' → '+f(c[w+'1d']),'num');
   cell(u==null?'–':(u>0?'+':'')+u.toFixed(2),'num '+(u>0?'up':u<0?'down':''));}
  cell(c.ep==null?'–':c.ep,'num'); tb.appendChild(tr);}
 const old=el.querySelector('tbody'); old?el.replaceChild(tb,old):el.appendChild(tb);
 info.textContent=sel.length+' of '+rows.length+' classes · page '+(page+1)+' of '+pages;
}
const head=document.createElement('thead'), hr=document.createElement('tr');
cols.forEach((c,i)=>{const th=document.createElement('th');th.textContent=c[0];th.style.cursor='pointer';
 th.title='sort';th.onclick=()=>{dir=(sortI===i)?-dir:1;sortI=i;render();};hr.appendChild(th);});
head.appendChild(hr); el.appendChild(head);
q.oninput=()=>{page=0;render();};
const pre=/^#q=(.*)$/.exec(location.hash);  // index.html#q=text: a shareable search
if(pre){q.value=decodeURIComponent(pre[1]);q.scrollIntoView();}
document.getElementById('classprev').onclick=()=>{page=Math.max(0,page-1);render();};
document.getElementById('classnext').onclick=()=>{page=page+1;render();};
render();
})();
