(function(){
const R=window.DCT_REPORT, out=document.getElementById('detail');
const f=x=>x==null?'–':x.toFixed(2), pad=(n,w)=>String(n).padStart(w,'0');
const byId=new Map(R.classes.map((c,i)=>[c.id,i]));
function show(){
 out.replaceChildren();
 const m=/^#c(\d+)$/.exec(location.hash), i=m?byId.get(Number(m[1])):undefined;
 const add=(tag,txt,cls)=>{const e=document.createElement(tag);if(txt!=null)e.textContent=txt;
  if(cls)e.className=cls;out.appendChild(e);return e;};
 document.title='DCT class — '+R.dataset+' — '+R.run_id;
 if(i===undefined){add('h1','Class not in this run');add('p',(m?'class '+m[1]:location.hash||'no class')+
  ' is not among the '+R.classes.length+' selected classes; go back to the index.');return;}
 const c=R.classes[i];
 add('h1',c.id+' · '+c.name);
 add('p','status '+c.status+(c.earlier?' (finished by an earlier run)':'')+(c.token?' · token '+c.token:'')+
  (c.ep!=null?' · epochs '+c.ep:''),'muted');
 if(c.err) add('p','error: '+c.err,'bad');
 // one line per registered metric with a value (classes.js "metrics"), baseline → DCT
 const g=(x,d)=>x==null?'–':x.toFixed(d);
 for(const m of (R.metrics||[])){ if(c[m.key+'d']==null&&c[m.key+'b']==null) continue;
  add('p',m.label+': '+g(c[m.key+'b'],m.digits)+' → '+g(c[m.key+'d'],m.digits)+' (baseline → DCT)'+
   (c[m.key+'r']!=null?'; real images '+g(c[m.key+'r'],m.digits):''));}
 if(c.s){ for(const v of ['baseline','dct']){ const row=add('div',null,'row');
   const l=document.createElement('span');l.className='lbl';l.textContent=v==='dct'?'DCT':'baseline';row.appendChild(l);
   for(const seed of R.seeds.slice(0,c.n==null?R.seeds.length:c.n)){const href=c.s+'/'+v+'/'+pad(seed,6)+'.'+c.x;
    const a=document.createElement('a'), im=document.createElement('img');
    a.href=href; im.src=href; im.loading='lazy'; im.alt=v+' seed '+seed; im.title='seed '+seed;
    a.appendChild(im); row.appendChild(a);}}}
 else add('p','no samples stored for this class','muted');
 const nav=add('p',null,'muted');
 for(const [d,t] of [[-1,'← previous'],[1,'next →']]){const j=i+d; if(j<0||j>=R.classes.length) continue;
  const a=document.createElement('a');a.href='#c'+R.classes[j].id;a.textContent=t+' ('+R.classes[j].id+')';
  nav.appendChild(a);nav.appendChild(document.createTextNode('  '));}
}
window.addEventListener('hashchange',show); show();
})();
